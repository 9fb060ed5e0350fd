"""The wheel ships the hand-written and the generated package side by side, both typed."""

from __future__ import annotations

import pathlib
import subprocess
import sys
import zipfile

PROJECT = pathlib.Path(__file__).resolve().parents[1]


def test_the_wheel_holds_both_packages_and_their_type_markers(tmp_path: pathlib.Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check", "--no-deps",
         "--no-build-isolation", "--wheel-dir", str(tmp_path), str(PROJECT)],
        check=True,
    )
    (wheel,) = tmp_path.glob("comfy_reality-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for expected in [
        "comfy_reality/__init__.py",
        "comfy_reality/py.typed",
        "comfyreality/__init__.py",
        "comfyreality/py.typed",
        "comfyreality/runtime/__init__.py",
        "comfyreality/runtime/v1/__init__.py",
        "comfyreality/runtime/v1/execution_service_pb2.py",
        "comfyreality/runtime/v1/execution_service_pb2.pyi",
        "comfyreality/runtime/v1/event_service_pb2_grpc.py",
        "comfyreality/runtime/v1/event_service_pb2_grpc.pyi",
    ]:
        assert expected in names, f"{expected} missing from {wheel.name}"
    # google.rpc is googleapis-common-protos' (through grpcio-status): never a second copy.
    assert not [n for n in names if n.startswith("google/")]
    metadata = zipfile.ZipFile(wheel).read(
        next(n for n in names if n.endswith(".dist-info/METADATA"))
    ).decode()
    for requirement in ["grpcio>=1.85.1", "protobuf<8,>=7.35.1", "grpcio-status>=1.85.1"]:
        assert f"Requires-Dist: {requirement}" in metadata, metadata
