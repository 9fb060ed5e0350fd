#!/usr/bin/env python3
"""Runtime CPU per one-node job, thread by thread, for one or more builds, alternately.

For each round and each runtime binary given, it starts the fake ComfyUI (`--time-scale 0.005`)
and a durable-store runtime on free ports (as scripts/job_timeline.py does), runs 300 one-node
jobs one at a time from the Python SDK to warm up, then JOBS more, and prints what each of the
runtime's threads spent per job (user + system time from /proc/<pid>/task/<tid>/stat, in clock
ticks: 10 ms over 1,500 jobs is 6.7 µs a job) and the wall time per job. Builds take turns
within a round (A B, A B, ...), so that a busy minute of a shared machine falls on both; compare
the medians.

    .tools/venv/bin/python scripts/job_cpu.py [--jobs 1500] [--rounds 5] [--fake BIN] BIN [BIN ...]

Needs a Python with grpcio and protobuf (the SDK's dependencies); the SDK itself is read from
clients/python.
"""

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import job_timeline  # noqa: E402  (its helpers: the fake, the runtime, the jobs)

WARM_UP = 300


def thread_cpu(pid):
    """{thread name: CPU seconds} of `pid`'s threads (names made unique by their order)."""
    ticks = os.sysconf("SC_CLK_TCK")
    out = {}
    for tid in sorted(os.listdir(f"/proc/{pid}/task"), key=int):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat", encoding="utf-8") as f:
                stat = f.read()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        if tid == str(pid):
            name = "async thread"
        fields = stat[stat.rindex(")") + 2 :].split()
        key = name
        while key in out:
            key += "'"
        out[key] = (int(fields[11]) + int(fields[12])) / ticks
    return out


def one_run(binary, fake_binary, jobs):
    """({thread: µs per job}, wall ms per job) of one runtime process."""
    with tempfile.TemporaryDirectory() as scratch:
        fake, port = job_timeline.start_fake(fake_binary, scratch)
        runtime, address = job_timeline.start_runtime(
            binary, scratch, "runtime", "sqlite", f"http://127.0.0.1:{port}"
        )
        try:
            time.sleep(1.0)
            asyncio.run(job_timeline.run_jobs(address, WARM_UP))
            before = thread_cpu(runtime.pid)
            start = time.monotonic()
            asyncio.run(job_timeline.run_jobs(address, jobs))
            wall = time.monotonic() - start
            after = thread_cpu(runtime.pid)
        finally:
            job_timeline.stop(runtime)
            job_timeline.stop(fake)
    per_job = {name: (cpu - before.get(name, 0.0)) / jobs * 1e6 for name, cpu in after.items()}
    per_job = {name: us for name, us in per_job.items() if us > 0}
    per_job["all threads"] = sum(per_job.values())
    return per_job, wall / jobs * 1e3


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("binaries", nargs="+", help="runtime binaries to compare")
    parser.add_argument("--jobs", type=int, default=1500)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--fake",
        default=os.path.join(job_timeline.ROOT, "target/release/comfy-reality-fake-comfyui"),
    )
    args = parser.parse_args()
    results = {binary: [] for binary in args.binaries}
    for round_ in range(args.rounds):
        for binary in args.binaries:
            per_job, wall = one_run(binary, args.fake, args.jobs)
            results[binary].append((per_job, wall))
            threads = ", ".join(f"{name} {us:.0f}" for name, us in per_job.items())
            print(f"round {round_ + 1} {binary}: {threads} µs/job; wall {wall:.3f} ms/job", flush=True)
    print(f"\nmedians of {args.rounds} rounds, {args.jobs} one-node jobs each")
    for binary, runs in results.items():
        names = sorted({name for per_job, _ in runs for name in per_job})
        medians = {
            name: statistics.median(per_job.get(name, 0.0) for per_job, _ in runs) for name in names
        }
        threads = ", ".join(f"{name} {us:.0f}" for name, us in medians.items())
        wall = statistics.median(w for _, w in runs)
        print(f"  {binary}: {threads} µs/job; wall {wall:.3f} ms/job")


if __name__ == "__main__":
    main()
