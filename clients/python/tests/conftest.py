"""Starts the fake ComfyUI and the real comfy-reality server on free ports for the tests.

The binaries come from $COMFY_REALITY_FAKE_BIN and $COMFY_REALITY_BIN (default: the repository's
target/debug/). Readiness is the line each prints once bound; no sleeps."""

from __future__ import annotations

import os
import pathlib
import queue
import signal
import subprocess
import threading
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import pytest

from comfy_reality import Client

REPO = pathlib.Path(__file__).resolve().parents[3]
STARTUP_TIMEOUT = 60.0


def binary(variable: str, name: str) -> str:
    path = os.environ.get(variable) or str(REPO / "target" / "debug" / name)
    if not os.access(path, os.X_OK):
        pytest.fail(f"{path} is not an executable (set ${variable})")
    return path


class Process:
    """A child process whose stdout lines are read by a thread; stderr goes to a file."""

    def __init__(self, args: list[str], log: pathlib.Path, env: Mapping[str, str]) -> None:
        self.log = log
        self._stderr = log.open("wb")
        self.child = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._stderr, env=dict(env)
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.child.stdout is not None
        for raw in self.child.stdout:
            self._lines.put(raw.decode("utf-8", "replace").rstrip("\n"))
        self._lines.put(None)

    def line(self, prefix: str) -> str:
        """The next stdout line, which must start with `prefix`; its remainder."""
        try:
            line = self._lines.get(timeout=STARTUP_TIMEOUT)
        except queue.Empty:
            line = None
        if line is None or not line.startswith(prefix):
            self.stop()
            pytest.fail(f"expected {prefix!r} on stdout, got {line!r}; stderr:\n{self.log.read_text()[-4000:]}")
        return line[len(prefix) :]

    def stop(self) -> None:
        if self.child.poll() is None:
            self.child.send_signal(signal.SIGTERM)
            try:
                self.child.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.child.kill()
                self.child.wait()
        self._stderr.close()


@dataclass
class Fake:
    url: str
    output_dir: pathlib.Path


@dataclass
class Server:
    address: str
    fake: Fake


def clean_env() -> dict[str, str]:
    """The environment without COMFY_REALITY* variables (they would configure the server)."""
    return {k: v for k, v in os.environ.items() if not k.upper().startswith("COMFY_REALITY")}


@pytest.fixture(scope="session")
def fake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fake]:
    root = tmp_path_factory.mktemp("fake")
    output = root / "output"
    output.mkdir()
    process = Process(
        [
            binary("COMFY_REALITY_FAKE_BIN", "comfy-reality-fake-comfyui"),
            "--port", "0", "--time-scale", "0.05", "--output-dir", str(output),
        ],
        root / "stderr.log",
        clean_env(),
    )
    url = process.line("comfy-reality-fake-comfyui listening on ")
    yield Fake(url=url, output_dir=output)
    process.stop()


@pytest.fixture(scope="session")
def server(fake: Fake, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("server")
    data = root / "data"
    env = clean_env()
    env["COMFY_REALITY__SCHEDULING__PROBE_INTERVAL_SECONDS"] = "0.1"
    process = Process(
        [
            binary("COMFY_REALITY_BIN", "comfy-reality"),
            "serve",
            "--listen", "127.0.0.1:0",
            "--metrics-listen", "127.0.0.1:0",
            "--comfyui", fake.url,
            "--data-dir", str(data),
        ],
        root / "stderr.log",
        env,
    )
    address = process.line("comfy-reality listening on ")
    process.line("comfy-reality metrics on ")
    yield Server(address=address, fake=fake)
    process.stop()


@pytest.fixture
def client(server: Server) -> Iterator[Client]:
    with Client(server.address, timeout=30) as c:
        yield c


def image_workflow(prefix: str, color: int = 7691863) -> dict[str, Any]:
    """EmptyImage -> ImageInvert -> SaveImage: one real PNG under the fake's output folder."""
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 48, "batch_size": 1, "color": color}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": prefix}},
    }


def delay_workflow(seconds: float, steps: int = 10, nonce: int = 0) -> dict[str, Any]:
    """TestDelay: sleeps `seconds` x the fake's time scale (0.05), with progress steps."""
    return {"1": {"class_type": "TestDelay", "inputs": {"seconds": seconds, "steps": steps, "nonce": nonce}}}


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"
