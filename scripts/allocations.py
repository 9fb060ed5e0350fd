#!/usr/bin/env python3
"""Heap allocations per one-node job and per submit, counted, not sampled.

The runtime's CPU per job is spread over hundreds of functions, and much of what is left is
memory going cold while a job waits for its backend: each allocation touches a block that is
no longer cached. The number of allocations is a figure that does not move with the machine's
load, so an A/B of two builds needs one run each. This script counts every call of mimalloc's
allocation path (`_mi_page_malloc_zero`, through a perf uprobe) in the runtime:

- per one-node job: a durable-store runtime in front of the fake ComfyUI (`--time-scale
  0.005`), jobs one at a time from the Python SDK (submit, then wait for the COMPLETED event on
  a stream opened before), as `job_timeline.py` runs them;
- per submit: a memory-store runtime whose one backend is down (nothing runs), benchmark 1's
  1 KiB workflow submitted from the Python SDK, 16 in flight;
- per authenticated submit: the same against a runtime with benchmark 7's principal (an API
  key, limits that never refuse, an audit event per call), the key on every call.

With each submit count it prints how much the runtime's resident memory grew per submit (what a
queued execution, and an authenticated one's audit event, keep).

With `--sites N` it also records where a job's and a submit's allocations are made (perf's
call chains of the probe, which need a build with frame pointers: `RUSTFLAGS="-C
force-frame-pointers=yes"`) and prints the N sites that make most, each as the first function
of the runtime's own code on the chain and its caller. Under the submits' load perf loses some
of the recorded chains (the total it prints after "of" is below the count): read the sites as
shares.

    .tools/venv/bin/python scripts/allocations.py [--runtime BIN] [--fake BIN]
        [--jobs N] [--submits N] [--sites N]

The runtime must keep its symbols (the release profile strips them):

    CARGO_PROFILE_RELEASE_STRIP=false cargo build --release --locked \\
        --target-dir target/symbols -p comfy-reality --bin comfy-reality

is the default `--runtime` (a build whose only DWARF is the standard library's is probed and
run as a copy without it, `objcopy --strip-debug`: perf would look the function up there); the
fake is `cargo build --release --locked -p comfy-reality-fake-comfyui`'s (the benchmarks build
it too). Needs root (uprobes), `perf` and `objcopy` on the PATH, and a Python with grpcio
and protobuf (the SDK's dependencies); the SDK itself is read from clients/python.
"""

import argparse
import asyncio
import collections
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile

from job_timeline import ROOT, run_jobs, start_fake, start_runtime, stop

PROBE = "comfy_alloc:malloc"
# Benchmark 1's workflow (bench/submit.rs): seven nodes, its text about 1 KiB.
SUBMIT_NODES = 7


def submit_workflow():
    nodes = {"1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}}}
    for i in range(2, SUBMIT_NODES):
        nodes[str(i)] = {"class_type": "ImageInvert", "inputs": {"image": [str(i - 1), 0]}}
    prefix = "bench/submit"
    while True:
        nodes[str(SUBMIT_NODES)] = {
            "class_type": "SaveImage",
            "inputs": {"images": [str(SUBMIT_NODES - 1), 0], "filename_prefix": prefix},
        }
        if len(json.dumps(nodes, separators=(",", ":"))) >= 1024:
            return nodes
        prefix += "x"


async def run_submits(address, submits, api_key=None):
    from comfy_reality import AsyncClient

    workflow = submit_workflow()
    async with AsyncClient(address, api_key=api_key) as client:
        in_flight = asyncio.Semaphore(16)

        async def one():
            async with in_flight:
                await client.execute(workflow)

        await asyncio.gather(*(one() for _ in range(submits)))


def perf_during(command, work):
    """Runs perf's `command` (attached to a process) while `work()` runs, then stops it."""
    perf = subprocess.Popen(["perf", *command], stdout=subprocess.DEVNULL)
    try:
        work()
    finally:
        perf.send_signal(signal.SIGINT)
        perf.wait()


def counted(pid, scratch, work):
    """Allocations the runtime `pid` makes while `work()` runs."""
    out = f"{scratch}/stat.csv"
    perf_during(["stat", "-x", ",", "-e", PROBE, "-p", str(pid), "-o", out], work)
    with open(out, encoding="utf-8") as f:
        for line in f:
            fields = line.strip().split(",")
            if len(fields) > 2 and fields[2] == PROBE:
                return int(fields[0])
    sys.exit(f"perf counted nothing for {PROBE}")


def sites(pid, scratch, work, top):
    """The `top` places that allocate most while `work()` runs, with their share."""
    data = f"{scratch}/sites.data"
    perf_during(["record", "-q", "-g", "-e", PROBE, "-p", str(pid), "-o", data], work)
    text = subprocess.run(
        ["perf", "script", "-i", data, "-F", "tid,ip,sym", "--no-inline"],
        capture_output=True, text=True, check=True,
    ).stdout
    places, total = collections.Counter(), 0
    for sample in text.split("\n\n"):
        # A sample: its thread id, then one "address symbol" line per frame, innermost first.
        frames = [
            line.split(None, 1)[1] if len(line.split(None, 1)) > 1 else "?"
            for line in sample.splitlines()[1:]
            if line.strip()
        ]
        if not frames:
            continue
        total += 1
        own = [f for f in frames if "comfy_reality" in f]
        if not own:
            places["(not the runtime's own code)"] += 1
            continue
        caller = f"  <-  {own[1][:90]}" if len(own) > 1 else ""
        places[own[0][:90] + caller] += 1
    return total, places.most_common(top)


def rss(pid):
    """The resident memory of process `pid`, in bytes."""
    with open(f"/proc/{pid}/status", encoding="utf-8") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    sys.exit(f"no VmRSS for process {pid}")


def measure(pid, scratch, run, warm_up, calls, top):
    """`run(warm_up)` to warm the runtime `pid` up, then its allocations over `run(calls)` and
    how much its resident memory grew meanwhile, and, when `top`, where they are made over
    another `run(calls)` (see `sites`; else None)."""
    run(warm_up)
    before = rss(pid)
    count = counted(pid, scratch, lambda: run(calls))
    grown = rss(pid) - before
    return count, grown, (sites(pid, scratch, lambda: run(calls), top) if top else None)


def measure_submits(runtime_bin, scratch, name, down, args, extra="", api_key=None):
    """Allocations and memory growth per submit of a memory-store runtime whose one backend is
    `down` (the submissions stay queued), `extra` in its configuration."""
    runtime, address = start_runtime(runtime_bin, scratch, name, "memory", down, extra)
    try:
        return measure(
            runtime.pid,
            scratch,
            lambda n: asyncio.run(run_submits(address, n, api_key)),
            3000,
            args.submits,
            args.sites,
        )
    finally:
        stop(runtime)


# Benchmark 7's principal (bench/auth.rs): an API key, limits high enough never to refuse, but
# present (they are checked), an audit event per submit.
KEY = "bench-key-0123456789abcdef"
SECURED = (
    '[auth]\nmode = "api_key"\n[limits]\nsubmits_per_second = 1000000.0\nsubmit_burst = 1000000\n'
    'max_queued = 100000000\n[[auth.principals]]\nname = "bench"\nrole = "submitter"\n'
    f'api_key_sha256 = ["{hashlib.sha256(KEY.encode()).hexdigest()}"]\n'
)


def probe_allocations(runtime, scratch):
    """Puts the uprobe on `runtime`'s allocation path; returns the binary to run. perf reads a
    binary's DWARF when it has some, and a release build without debug info still carries the
    standard library's, where mimalloc's C code is not: perf then finds no such function. A copy
    without the DWARF (`objcopy --strip-debug`, the symbols kept) is probed and run instead."""
    subprocess.run(["perf", "probe", "-q", "-d", PROBE], stderr=subprocess.DEVNULL, check=False)

    def probe(binary):
        return subprocess.run(
            ["perf", "probe", "-q", "-x", binary, "-a", f"{PROBE}=_mi_page_malloc_zero"],
            capture_output=True, text=True, check=False,
        )

    added = probe(runtime)
    if added.returncode == 0:
        return runtime
    copy = f"{scratch}/comfy-reality"
    subprocess.run(["objcopy", "--strip-debug", runtime, copy], check=True)
    again = probe(copy)
    if again.returncode != 0:
        sys.exit(
            "no uprobe on mimalloc's allocation path (a stripped runtime?): "
            f"{added.stderr.strip()} / {again.stderr.strip()}"
        )
    return copy


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runtime", default=os.path.join(ROOT, "target/symbols/release/comfy-reality"))
    parser.add_argument("--fake", default=os.path.join(ROOT, "target/release/comfy-reality-fake-comfyui"))
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--submits", type=int, default=5000)
    parser.add_argument("--sites", type=int, default=0, help="print the N places that allocate most per job and per submit")
    args = parser.parse_args()
    for binary in (args.runtime, args.fake):
        if not os.path.exists(binary):
            sys.exit(f"{binary} not found (see this script's documentation for the build)")
    scratch = tempfile.mkdtemp(prefix="allocations-")
    try:
        args.runtime = probe_allocations(args.runtime, scratch)
        fake, fake_port = start_fake(args.fake, scratch)
        try:
            runtime, address = start_runtime(
                args.runtime, scratch, "jobs", "sqlite", f"http://127.0.0.1:{fake_port}"
            )
            try:
                jobs, _, found = measure(
                    runtime.pid, scratch, lambda n: asyncio.run(run_jobs(address, n)), 200, args.jobs, args.sites
                )
            finally:
                stop(runtime)
        finally:
            stop(fake)
        # A backend nothing listens on: the submissions stay queued.
        with socket.socket() as closed:
            closed.bind(("127.0.0.1", 0))
            down = f"http://127.0.0.1:{closed.getsockname()[1]}"
        submits, grown, found_submits = measure_submits(args.runtime, scratch, "submits", down, args)
        secured, secured_grown, found_secured = measure_submits(
            args.runtime, scratch, "secured", down, args, SECURED, KEY
        )
        n = args.submits
        print(f"allocations per one-node job (durable store): {jobs / args.jobs:.1f} over {args.jobs} jobs")
        print(
            f"allocations per submit (memory store, 1 KiB workflow): {submits / n:.1f} over {n}; "
            f"resident memory grew {grown / n:.0f} B per submit"
        )
        print(
            f"allocations per authenticated submit (benchmark 7's principal): {secured / n:.1f} "
            f"({(secured - submits) / n:+.1f}); resident memory grew {secured_grown / n:.0f} B per submit "
            f"({(secured_grown - grown) / n:+.0f} B)"
        )
        for what, found_in, calls in (
            ("a job", found, args.jobs),
            ("a submit", found_submits, n),
            ("an authenticated submit", found_secured, n),
        ):
            if found_in:
                total, places = found_in
                print(f"where {what}'s allocations are made (per call, of {total / calls:.1f}):")
                for place, count in places:
                    print(f"  {count / calls:7.1f}  {place}")
    finally:
        subprocess.run(["perf", "probe", "-q", "-d", PROBE], stderr=subprocess.DEVNULL, check=False)
        subprocess.run(["rm", "-rf", scratch], check=False)


if __name__ == "__main__":
    main()
