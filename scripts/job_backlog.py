#!/usr/bin/env python3
"""Runtime CPU per one-node job with a backlog, for one or more builds, alternately.

For each round and each runtime binary given, it starts the fake ComfyUI (`--time-scale 0.005`)
and a durable-store runtime on free ports (as scripts/job_timeline.py does), submits 50 one-node
jobs at once from the Python SDK to warm up, then JOBS more at once, waits until every one has
COMPLETED, and prints the runtime's CPU (user + system, from /proc/<pid>/stat, in clock ticks: 10
ms over 1,000 jobs is 10 µs a job) and the wall time per job. All but the first few of a burst
wait in the runtime's queue, their prompts held, and are dispatched from there: the path
scripts/job_cpu.py, whose jobs run one at a time, does not take. With `--prompt-bytes`, each
node also carries inputs the TestDelay node does not declare (short strings and numbers, as a
real workflow's many nodes and inputs are) until its prompt is about that large. Builds take
turns within a round, so that a busy minute of a shared machine falls on both; compare the
medians.

    .tools/venv/bin/python scripts/job_backlog.py [--jobs 1000] [--rounds 3] [--prompt-bytes N]
        [--fake BIN] BIN [BIN ...]

Needs a Python with grpcio and protobuf (the SDK's dependencies); the SDK itself is read from
clients/python.
"""

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import job_timeline  # noqa: E402  (its helpers: the fake, the runtime)

WARM_UP = 50


def runtime_cpu(pid):
    """The CPU seconds `pid` has used, user and system."""
    fields = open(f"/proc/{pid}/stat", encoding="utf-8").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def padding(prompt_bytes):
    """Undeclared inputs that make a one-node prompt about `prompt_bytes` large."""
    inputs, i = {}, 0
    while len(json.dumps(inputs)) < prompt_bytes:
        inputs[f"p{i}"] = "a cat in a spacesuit" if i % 2 else i * 0.5
        i += 1
    return inputs


async def burst(address, jobs, extra):
    """Submits `jobs` one-node jobs at once and waits until each has COMPLETED."""
    from comfy_reality import AsyncClient

    async with AsyncClient(address) as client:
        stream = client.events(
            None, event_types=["TASK_EVENT_TYPE_COMPLETED"], categories=["EVENT_CATEGORY_TASK"]
        )
        submitted, ended = set(), set()
        all_ended = asyncio.get_running_loop().create_future()

        async def read():
            async for event in stream:
                ended.add(event.execution_id)
                if len(submitted) == jobs and submitted <= ended and not all_ended.done():
                    all_ended.set_result(None)

        reader = asyncio.create_task(read())
        await asyncio.sleep(0.2)
        nonce = time.time_ns()

        async def submit(i):
            inputs = {"seconds": 0.0, "steps": 1, "nonce": nonce + i, **extra}
            execution = await client.execute({"1": {"class_type": "TestDelay", "inputs": inputs}})
            submitted.add(execution.id)

        await asyncio.gather(*(submit(i) for i in range(jobs)))
        if not submitted <= ended:
            await all_ended
        reader.cancel()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("binaries", nargs="+", help="runtime binaries to compare")
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--prompt-bytes", type=int, default=0)
    parser.add_argument(
        "--fake", default=os.path.join(job_timeline.ROOT, "target/release/comfy-reality-fake-comfyui")
    )
    args = parser.parse_args()
    if args.jobs < 1 or args.rounds < 1 or args.prompt_bytes < 0:
        sys.exit("--jobs and --rounds must be at least 1, --prompt-bytes not negative")
    extra = padding(args.prompt_bytes) if args.prompt_bytes else {}
    cpu = {binary: [] for binary in args.binaries}
    for round_ in range(args.rounds):
        for binary in args.binaries:
            with tempfile.TemporaryDirectory() as scratch:
                fake, port = job_timeline.start_fake(args.fake, scratch)
                runtime, address = job_timeline.start_runtime(
                    binary, scratch, "runtime", "sqlite", f"http://127.0.0.1:{port}"
                )
                try:
                    asyncio.run(burst(address, WARM_UP, extra))
                    before, started = runtime_cpu(runtime.pid), time.monotonic()
                    asyncio.run(burst(address, args.jobs, extra))
                    used, took = runtime_cpu(runtime.pid) - before, time.monotonic() - started
                finally:
                    job_timeline.stop(runtime)
                    job_timeline.stop(fake)
            cpu[binary].append(used / args.jobs * 1e6)
            print(
                f"round {round_ + 1} {binary}: {cpu[binary][-1]:.0f} µs CPU a job, "
                f"{took / args.jobs * 1e3:.2f} ms wall a job",
                flush=True,
            )
    for binary in args.binaries:
        print(f"{binary}: median {statistics.median(cpu[binary]):.0f} µs CPU a job")


if __name__ == "__main__":
    main()
