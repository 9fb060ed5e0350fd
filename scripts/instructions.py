#!/usr/bin/env python3
"""Instructions the runtime executes per submit and per one-node job, counted, not timed.

CPU time on a shared two-core machine moves by 10-20% between windows of the same build, more
than most single changes to the job path save; benchmark 7's pairs, for one, read 0.90x-1.57x
for one build in one hour. The number of instructions the runtime executes for the same work
barely moves (0.2% between runs of one build for a submit, 1.5% for a one-node job, whose
batching varies): an A/B of two builds needs one run each. This
script runs the runtime under Valgrind's callgrind, instrumentation off while it starts and
warms up, on for the measured calls only, and prints the instructions per call:

- per submit: a memory-store runtime whose one backend is down (nothing runs), benchmark 1's
  1 KiB workflow submitted from the Python SDK, 16 in flight (as `allocations.py` does);
- per authenticated submit: the same against benchmark 7's principal (an API key, limits that
  never refuse, an audit event per call), and its difference from the first;
- per one-node job: a durable-store runtime in front of the fake ComfyUI (`--time-scale
  0.005`), jobs one at a time from the Python SDK, as `job_timeline.py` runs them.

What it does not count: the kernel's work (system calls, page faults: the memory a submit keeps
is `allocations.py`'s figure) and cache misses, and it counts a `rep movsb` or `rep stosb`
(glibc's `memcpy` and `memset` of larger blocks) once per byte: their share reads larger than
their cost. Read it beside the timed benchmarks, not instead of them. Under Valgrind the runtime runs some 50 times slower, its threads one at a time: the
job path's batching (writes gathered while another commits) differs from a native run.

    .tools/venv/bin/python scripts/instructions.py [--submits N] [--jobs N] [--fake BIN]
        BIN [BIN ...]

`--submits 0` or `--jobs 0` leaves that workload out.

Needs `valgrind` (with `callgrind_control`) on the PATH and a Python with grpcio and protobuf
(the SDK's dependencies); the SDK itself is read from clients/python. Any build works, stripped
or not; `--dump DIR` keeps each run's callgrind file (named after the build's place in the
command line, its file name and the workload) for `callgrind_annotate`, which needs a build with
symbols to name functions.
"""

import argparse
import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile

import allocations
from job_timeline import ROOT, run_jobs, start_fake, start_runtime, stop


def totals(path):
    """The instruction count a callgrind file records."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.startswith("totals:") or line.startswith("summary:"):
                return int(line.split()[1])
    sys.exit(f"{path} has no totals")


def counted(binary, scratch, name, store, backend, extra, warm_up, calls, run, dump):
    """Instructions `binary` executes over `run(calls)`, after `run(warm_up)` with the
    instrumentation off; the runtime on `store`, its backend at `backend`, `extra` in its
    configuration. `dump` is None or (directory, file name prefix) for its callgrind file."""
    out = f"{scratch}/{name}.callgrind"
    # Under valgrind the runtime takes seconds to start.
    runtime, address = start_runtime(
        binary, scratch, name, store, backend, extra,
        wrapper=("valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}"),
        deadline=60.0,
    )
    try:
        run(address, warm_up)
        control = ["callgrind_control", "--instr=on", str(runtime.pid)]
        subprocess.run(control, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        run(address, calls)
        # The first dump holds what ran since the instrumentation went on.
        subprocess.run(
            ["callgrind_control", "--dump", str(runtime.pid)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True,
        )
    finally:
        stop(runtime)
    count = totals(f"{out}.1")
    if dump:
        directory, prefix = dump
        shutil.copy(f"{out}.1", os.path.join(directory, f"{prefix}-{name}.callgrind"))
    return count


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("binaries", nargs="+", help="runtime binaries to compare")
    parser.add_argument("--submits", type=int, default=3000)
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--fake", default=os.path.join(ROOT, "target/release/comfy-reality-fake-comfyui"))
    parser.add_argument("--dump", help="a directory to keep each run's callgrind file in")
    args = parser.parse_args()
    if args.submits < 0 or args.jobs < 0:
        parser.error("--submits and --jobs count calls: 0 or more")
    if args.submits == 0 and args.jobs == 0:
        parser.error("nothing to count: --submits and --jobs are both 0")
    # The fake ComfyUI runs the jobs only.
    for binary in (*args.binaries, *((args.fake,) if args.jobs else ())):
        if not os.path.exists(binary):
            sys.exit(f"{binary} not found")
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        sys.exit("valgrind and callgrind_control are needed on the PATH")
    # A backend nothing listens on: the submissions stay queued.
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        down = f"http://127.0.0.1:{closed.getsockname()[1]}"

    def submits(key):
        return lambda address, n: asyncio.run(allocations.run_submits(address, n, key))

    def jobs(address, n):
        asyncio.run(run_jobs(address, n))

    rows = []
    for place, binary in enumerate(args.binaries, start=1):
        dump = (args.dump, f"{place}-{os.path.basename(binary)}") if args.dump else None
        scratch = tempfile.mkdtemp(prefix="instructions-")
        # A workload of no calls is not run (`--submits 0` or `--jobs 0`).
        plain = secured = job = None
        try:
            if args.submits:
                plain = counted(
                    binary, scratch, "submits", "memory", down, "", 300, args.submits, submits(None), dump,
                ) / args.submits
                secured = counted(
                    binary, scratch, "secured", "memory", down, allocations.SECURED, 300, args.submits,
                    submits(allocations.KEY), dump,
                ) / args.submits
            if args.jobs:
                fake, fake_port = start_fake(args.fake, scratch)
                try:
                    job = counted(
                        binary, scratch, "jobs", "sqlite", f"http://127.0.0.1:{fake_port}", "", 50, args.jobs,
                        jobs, dump,
                    ) / args.jobs
                finally:
                    stop(fake)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        rows.append((binary, plain, secured, job))
    print(f"instructions per call ({args.submits} submits, {args.jobs} one-node jobs per build):")
    base = rows[0]
    for place, (binary, plain, secured, job) in enumerate(rows):
        parts, vs = [], []
        if plain is not None:
            parts.append(
                f"submit {plain:,.0f}; authenticated submit {secured:,.0f} "
                f"({secured / plain:.3f}x, +{secured - plain:,.0f})"
            )
            vs.append(f"submit {plain / base[1]:.3f}x, authenticated submit {secured / base[2]:.3f}x")
        if job is not None:
            parts.append(f"one-node job {job:,.0f}")
            vs.append(f"job {job / base[3]:.3f}x")
        against = f"  (vs the first: {', '.join(vs)})" if place > 0 else ""
        print(f"  {binary}: {'; '.join(parts)}{against}")


if __name__ == "__main__":
    main()
