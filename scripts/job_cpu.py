#!/usr/bin/env python3
"""Runtime CPU per one-node job, thread by thread, for one or more builds, alternately.

For each round and each runtime binary given, it starts the fake ComfyUI (`--time-scale 0.005`)
and a durable-store runtime on free ports (as scripts/job_timeline.py does), runs 300 one-node
jobs one at a time from the Python SDK to warm up, then JOBS more, and prints what each of the
runtime's threads spent per job (user + system time from /proc/<pid>/task/<tid>/stat, in clock
ticks: 10 ms over 1,500 jobs is 6.7 µs a job), the wall time per job and the bytes the runtime
passed to write calls per job (/proc/<pid>/io's wchar, the bytes of write, pwrite and writev: the
store's WAL, the checkpoints into the database file, and the socket writes that go through
them). Builds take turns within a round (A B, A B, ...), so that a busy minute of a
shared machine falls on both; compare the medians. The node is a TestDelay of 0 seconds in one
step unless `--seconds` and `--steps` say otherwise; `--prompt-bytes` makes each prompt about
that large (real workflows' run to tens of KiB).

    .tools/venv/bin/python scripts/job_cpu.py [--jobs 1500] [--rounds 5] [--warm-up 300]
        [--prompt-bytes N] [--seconds S] [--steps N] [--fake BIN] BIN [BIN ...]

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


def written(pid):
    """Bytes `pid` has passed to write, pwrite and writev so far (/proc/<pid>/io's wchar)."""
    with open(f"/proc/{pid}/io", encoding="utf-8") as f:
        for line in f:
            name, _, value = line.partition(":")
            if name == "wchar":
                return int(value)
    return 0


def one_run(binary, fake_binary, jobs, job):
    """({thread: µs per job}, wall ms per job, KiB written per job) of one runtime process;
    `job` the keyword arguments of `job_timeline.run_jobs` (and `warm_up`, the jobs before)."""
    job = dict(job)
    warm_up = job.pop("warm_up")
    with tempfile.TemporaryDirectory() as scratch:
        fake, port = job_timeline.start_fake(fake_binary, scratch)
        runtime, address = job_timeline.start_runtime(
            binary, scratch, "runtime", "sqlite", f"http://127.0.0.1:{port}"
        )
        try:
            time.sleep(1.0)
            asyncio.run(job_timeline.run_jobs(address, warm_up, **job))
            before, bytes_before = thread_cpu(runtime.pid), written(runtime.pid)
            start = time.monotonic()
            asyncio.run(job_timeline.run_jobs(address, jobs, **job))
            wall = time.monotonic() - start
            after, bytes_after = thread_cpu(runtime.pid), written(runtime.pid)
        finally:
            job_timeline.stop(runtime)
            job_timeline.stop(fake)
    per_job = {name: (cpu - before.get(name, 0.0)) / jobs * 1e6 for name, cpu in after.items()}
    per_job = {name: us for name, us in per_job.items() if us > 0}
    per_job["all threads"] = sum(per_job.values())
    return per_job, wall / jobs * 1e3, (bytes_after - bytes_before) / jobs / 1024


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("binaries", nargs="+", help="runtime binaries to compare")
    parser.add_argument("--jobs", type=int, default=1500)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warm-up", type=int, default=WARM_UP, help="jobs run before measuring")
    parser.add_argument(
        "--prompt-bytes",
        type=int,
        default=0,
        help="make each job's prompt about this large (a text input its node ignores)",
    )
    parser.add_argument(
        "--seconds",
        type=float,
        default=0.0,
        help="the node's TestDelay seconds, before the fake's time scale of 0.005",
    )
    parser.add_argument("--steps", type=int, default=1, help="the node's progress steps")
    parser.add_argument(
        "--fake",
        default=os.path.join(job_timeline.ROOT, "target/release/comfy-reality-fake-comfyui"),
    )
    args = parser.parse_args()
    job = {
        "warm_up": args.warm_up,
        "prompt_bytes": args.prompt_bytes,
        "seconds": args.seconds,
        "steps": args.steps,
    }
    results = {binary: [] for binary in args.binaries}
    for round_ in range(args.rounds):
        for binary in args.binaries:
            per_job, wall, kib = one_run(binary, args.fake, args.jobs, job)
            results[binary].append((per_job, wall, kib))
            threads = ", ".join(f"{name} {us:.0f}" for name, us in per_job.items())
            print(
                f"round {round_ + 1} {binary}: {threads} µs/job; wall {wall:.3f} ms/job;"
                f" written {kib:.1f} KiB/job",
                flush=True,
            )
    shape = f"{args.steps} step(s) of {args.seconds} s at time scale 0.005"
    if args.prompt_bytes:
        shape += f", prompts of {args.prompt_bytes} bytes"
    print(f"\nmedians of {args.rounds} rounds, {args.jobs} one-node jobs each ({shape})")
    for binary, runs in results.items():
        names = sorted({name for per_job, _, _ in runs for name in per_job})
        medians = {
            name: statistics.median(per_job.get(name, 0.0) for per_job, _, _ in runs)
            for name in names
        }
        threads = ", ".join(f"{name} {us:.0f}" for name, us in medians.items())
        wall = statistics.median(w for _, w, _ in runs)
        kib = statistics.median(k for _, _, k in runs)
        print(f"  {binary}: {threads} µs/job; wall {wall:.3f} ms/job; written {kib:.1f} KiB/job")


if __name__ == "__main__":
    main()
