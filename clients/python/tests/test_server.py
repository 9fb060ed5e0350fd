"""The SDK against the real comfy-reality server and the fake ComfyUI (see conftest.py)."""

from __future__ import annotations

import json
import pathlib
import urllib.request
import uuid
from typing import Any

import grpc
import pytest

from comfy_reality import (
    Client,
    ComfyRealityError,
    Event,
    Execution,
    InvalidArgumentError,
    NotFoundError,
    TaskEventType,
    TaskPriority,
    TaskStatus,
    UnavailableError,
    WorkflowRef,
)
from conftest import Server, delay_workflow, image_workflow, unique

SEED = 18446744073709551615  # 2**64 - 1: ComfyUI's largest seed; a double cannot hold it


def fake_file(server: Server, artifact: str) -> bytes:
    """The file the fake ComfyUI wrote for an artifact (found by its file name)."""
    name = pathlib.PurePosixPath(artifact).name
    matches = list(server.fake.output_dir.rglob(name))
    assert len(matches) == 1, f"{name} under {server.fake.output_dir}: {matches}"
    return matches[0].read_bytes()


def assert_watched_to_the_end(events: list[Event], execution: Execution, end: int) -> None:
    assert events, "watch yielded no event"
    sequences = [e.sequence for e in events]
    assert sequences == sorted(set(sequences)), f"sequences not strictly increasing: {sequences}"
    assert all(e.execution_id == execution.id for e in events)
    last = events[-1]
    assert last.WhichOneof("payload") == "task_event"
    assert last.task_event.task_id == execution.root_task_id
    assert last.task_event.event_type == end


def test_health_is_serving(client: Client) -> None:
    assert client.health() == "SERVING"


def test_execute_a_dict_watch_it_to_the_end_and_download_its_image(
    client: Client, server: Server, tmp_path: pathlib.Path
) -> None:
    tag = unique("dict")
    execution = client.execute(image_workflow(unique("img")), tags=[tag], name="from a dict")
    assert isinstance(execution, Execution)
    assert execution.id and execution.root_task_id
    assert execution.status in (TaskStatus.TASK_STATUS_QUEUED, TaskStatus.TASK_STATUS_RUNNING)
    assert list(execution.tags) == [tag]

    events = list(client.watch(execution.id))
    # The execution may have ended before the watch began: then the watch yields nothing, as
    # documented (test_watch_follows_a_running_execution_to_its_end watches one that runs).
    if events:
        assert_watched_to_the_end(events, execution, TaskEventType.TASK_EVENT_TYPE_COMPLETED)

    done = client.wait(execution.id, timeout=30)
    assert done.status == TaskStatus.TASK_STATUS_COMPLETED
    assert len(done.artifacts) == 1
    artifact = done.artifacts[0]
    assert artifact.endswith(".png")

    dest = tmp_path / "out.png"
    data = client.download(done.id, artifact, dest)
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    assert data == fake_file(server, artifact)
    assert dest.read_bytes() == data
    # Into a folder: under the artifact's own file name.
    client.download(done.id, artifact, tmp_path)
    assert (tmp_path / pathlib.PurePosixPath(artifact).name).read_bytes() == data

    # A finished execution's watch ends at once.
    assert list(client.watch(execution.id)) == []


@pytest.mark.parametrize("as_path", [False, True], ids=["str", "pathlib.Path"])
def test_execute_a_json_file_with_a_priority(client: Client, tmp_path: pathlib.Path, as_path: bool) -> None:
    path = tmp_path / "workflow.json"
    path.write_text(json.dumps(image_workflow(unique("file"))))
    execution = client.execute(path if as_path else str(path), priority="high")
    assert execution.priority == TaskPriority.TASK_PRIORITY_HIGH
    done = client.wait(execution.id, timeout=30)
    assert done.status == TaskStatus.TASK_STATUS_COMPLETED
    assert len(done.artifacts) == 1


def test_a_file_that_is_not_json_is_refused_before_anything_is_sent(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "workflow.json"
    path.write_text("{not json")
    # Nothing listens on port 1: reaching the network would raise UnavailableError instead.
    with Client("127.0.0.1:1", timeout=5) as offline:
        with pytest.raises(ValueError, match="not JSON"):
            offline.execute(path)
        with pytest.raises(UnavailableError):
            offline.get("anything")


def test_watch_follows_a_running_execution_to_its_end(client: Client) -> None:
    # 20 s x 0.05 = a second of TestDelay in five steps: running when the watch begins.
    execution = client.execute(delay_workflow(20, steps=5, nonce=int(uuid.uuid4().int % 2**32)))
    events = list(client.watch(execution.id))
    assert_watched_to_the_end(events, execution, TaskEventType.TASK_EVENT_TYPE_COMPLETED)
    steps = [
        e for e in events if e.node and e.task_event.event_type == TaskEventType.TASK_EVENT_TYPE_PROGRESS
    ]
    assert steps, "no node progress in the watched events"
    assert client.get(execution.id).status == TaskStatus.TASK_STATUS_COMPLETED


def test_cancel_a_slow_execution_while_it_runs(client: Client) -> None:
    # 400 s x 0.05 = 20 s of TestDelay: only the cancel can end it within the wait below.
    execution = client.execute(delay_workflow(400, steps=400))
    running = False
    events = client.watch(execution.id)
    for event in events:
        if event.node and event.task_event.event_type in (
            TaskEventType.TASK_EVENT_TYPE_STARTED,
            TaskEventType.TASK_EVENT_TYPE_PROGRESS,
        ):
            running = True
            break
    events.close()
    assert running, "the execution never started"

    cancelled = client.cancel(execution.id, reason="test says stop")
    assert cancelled.id == execution.id
    done = client.wait(execution.id, timeout=15)
    assert done.status == TaskStatus.TASK_STATUS_CANCELLED
    # Cancelling a finished execution returns it unchanged.
    assert client.cancel(execution.id).status == TaskStatus.TASK_STATUS_CANCELLED


def test_an_invalid_workflow_names_each_bad_field(client: Client) -> None:
    workflow: dict[str, Any] = image_workflow(unique("bad"))
    del workflow["2"]["class_type"]
    with pytest.raises(InvalidArgumentError) as caught:
        client.execute(workflow)
    error = caught.value
    assert isinstance(error, ComfyRealityError)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.reason == "ValidationError"
    assert error.field_violations == [('workflow_json["2"].class_type', "is required")]
    assert 'workflow_json["2"].class_type: is required' in str(error)


def test_an_unknown_id_is_not_found(client: Client) -> None:
    for call in (
        lambda: client.get("no-such-execution"),
        lambda: client.cancel("no-such-execution"),
        lambda: client.wait("no-such-execution", timeout=10),
        lambda: client.download("no-such-execution", "x.png"),
    ):
        with pytest.raises(NotFoundError) as caught:
            call()
        assert caught.value.code == grpc.StatusCode.NOT_FOUND
        assert caught.value.reason


def test_list_goes_through_every_page(client: Client) -> None:
    tag = unique("list")
    ids = [client.execute(image_workflow(unique("list")), tags=[tag]).id for _ in range(5)]
    for id in ids:
        client.wait(id, timeout=30)

    calls = 0
    inner = client._executions.ListExecutions

    def counting(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        return inner(*args, **kwargs)

    client._executions.ListExecutions = counting  # type: ignore[assignment]
    listed = [e.id for e in client.list(tags=[tag], page_size=2)]
    assert listed == ids  # oldest first, each once
    assert calls == 3  # 2 + 2 + 1
    client._executions.ListExecutions = inner

    assert [e.id for e in client.list(tags=[tag], status="completed", page_size=1)] == ids
    assert list(client.list(tags=[tag], status=[TaskStatus.TASK_STATUS_FAILED, "cancelled"])) == []


def test_an_override_seed_of_2_to_the_64_minus_1_arrives_exactly(client: Client, server: Server) -> None:
    execution = client.execute(
        delay_workflow(0.1, steps=1, nonce=0),
        overrides={"1": {"nonce": SEED}},
        timeout_seconds=60,
        max_retries=0,
    )
    done = client.wait(execution.id, timeout=30)
    assert done.status == TaskStatus.TASK_STATUS_COMPLETED, done.error
    with urllib.request.urlopen(f"{server.fake.url}/history/{done.prompt_id}", timeout=10) as response:
        text = response.read().decode()
    history = json.loads(text)  # Python's json keeps big integers exact
    graph = history[done.prompt_id]["prompt"][2]
    assert graph["1"]["inputs"]["nonce"] == SEED, graph
    assert str(SEED) in text


def test_register_a_workflow_and_run_it_by_reference(client: Client) -> None:
    workflow_id = unique("registered")
    definition = client.register_workflow(
        image_workflow(unique("reg")), name="registered image", version="1.0.0", id=workflow_id,
        description="an image, inverted",
    )
    assert definition.id == workflow_id
    assert definition.version == "1.0.0"
    execution = client.execute(WorkflowRef(workflow_id))
    assert execution.workflow_id == workflow_id
    done = client.wait(execution.id, timeout=30)
    assert done.status == TaskStatus.TASK_STATUS_COMPLETED
    assert [e.id for e in client.list(workflow_id=workflow_id)] == [execution.id]
    with pytest.raises(NotFoundError):
        client.execute(WorkflowRef(workflow_id, version="9.9.9"))


def test_events_resume_after_any_sequence_without_gap_or_duplicate(client: Client) -> None:
    execution = client.execute(image_workflow(unique("events")))
    done = client.wait(execution.id, timeout=30)
    assert done.status == TaskStatus.TASK_STATUS_COMPLETED

    def history(after: int) -> list[Event]:
        events: list[Event] = []
        with client.events(after, execution_ids=[execution.id], include_node_events=True) as stream:
            for event in stream:
                events.append(event)
                if event.task_event.task_id == done.root_task_id and event.task_event.event_type == (
                    TaskEventType.TASK_EVENT_TYPE_COMPLETED
                ):
                    break
        return events

    everything = history(0)
    types = [e.task_event.event_type for e in everything if e.task_event.task_id == done.root_task_id]
    assert types[0] == TaskEventType.TASK_EVENT_TYPE_CREATED
    assert types[-1] == TaskEventType.TASK_EVENT_TYPE_COMPLETED
    assert len(everything) > 4
    middle = everything[3].sequence
    assert history(middle) == everything[4:]


def test_an_event_stream_can_be_closed_from_another_thread(client: Client) -> None:
    import threading

    stream = client.events(None)  # from now: blocks between heartbeats
    ended = threading.Event()

    def consume() -> None:
        for _ in stream:
            pass
        ended.set()

    thread = threading.Thread(target=consume)
    thread.start()
    client.execute(image_workflow(unique("close")))  # something to stream meanwhile
    stream.close()
    thread.join(10)
    assert ended.is_set(), "close() did not end the iteration"
    assert stream.closed


def test_wait_gives_up_at_its_timeout(client: Client) -> None:
    from comfy_reality import DeadlineExceededError

    execution = client.execute(delay_workflow(400, steps=400))
    try:
        with pytest.raises(DeadlineExceededError) as caught:
            client.wait(execution.id, timeout=0.5)
        assert isinstance(caught.value, TimeoutError)
        assert caught.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    finally:
        client.cancel(execution.id)
    assert client.wait(execution.id, timeout=15).status == TaskStatus.TASK_STATUS_CANCELLED
