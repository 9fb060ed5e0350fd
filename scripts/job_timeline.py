#!/usr/bin/env python3
"""Where a one-node job's wall time goes: a timeline of system calls, wake-ups and context switches.

It starts the fake ComfyUI and a durable-store runtime on free ports, runs one-node jobs one at a
time from the Python SDK (submit, then wait for the COMPLETED event on a stream opened before),
records them system-wide with perf's tracepoints (raw_syscalls, sched_switch, sched_wakeup), and
prints, per job, the medians of the segments a job waits through:

- the submit read by the runtime -> the prompt's POST written to ComfyUI, and -> its answer;
- the POST -> read by the fake (how long the fake waited for a CPU);
- the POST -> the fake's first socket message of the job's end (the fake's own time);
- that message -> read by the runtime -> the store's writer woken with the end -> the completion
  event written to the subscriber;

and the context switches into the runtime's threads and its wake-ups of the writer, per job.
perf's own overhead stretches every segment, and a moment the recording does not show (a writer
already awake, a fake slower than its timer) makes an outlier of that job's segment: read the
medians, and compare builds with one run each, alternately.

    .tools/venv/bin/python scripts/job_timeline.py [--runtime BIN] [--fake BIN] [--jobs N]

Needs root (or perf_event_paranoid <= -1), `perf` and `ss` on the PATH, and a Python with grpcio
and protobuf (the SDK's dependencies); the SDK itself is read from clients/python.
"""

import argparse
import asyncio
import collections
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "clients/python/src"))
sys.path.insert(0, os.path.join(ROOT, "clients/python/gen"))

SYSCALLS = {0: "read", 1: "write", 20: "writev", 44: "sendto", 45: "recvfrom", 202: "futex"}
# The fake's end of a job comes after its own timer (about 1 ms at this time scale): its first
# socket message this long after the POST belongs to the job's end.
FAKE_END_AFTER = 0.0005


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, what, deadline=10.0):
    end = time.time() + deadline
    while time.time() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"{what} did not listen on {port}")


def start_fake(binary, scratch):
    """The fake ComfyUI at `--time-scale 0.005` on a free port, listening: (process, port)."""
    port = free_port()
    fake = subprocess.Popen(
        [binary, "--port", str(port), "--time-scale", "0.005", "--output-dir", f"{scratch}/out"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    wait_port(port, "the fake")
    return fake, port


def start_runtime(binary, scratch, name, store, backend, extra="", wrapper=(), deadline=10.0):
    """A runtime on a free port, on the `store` queue type, its one backend at `backend`, the
    TOML `extra` appended to its configuration, listening within `deadline` seconds: (process,
    address). `wrapper` is a command the runtime runs under (a profiler), if any."""
    port = free_port()
    config = f"{scratch}/{name}.toml"
    with open(config, "w", encoding="utf-8") as f:
        f.write(
            f'[service]\nlisten = "127.0.0.1:{port}"\nmetrics_listen = "127.0.0.1:0"\n'
            f'data_dir = "{scratch}/{name}-data"\n'
            f'[runtime]\nqueue_type = "{store}"\nlog_level = "warning"\n'
            f'[scheduling]\nmax_queue_len = 1000000\n'
            f'[[servers]]\nname = "b0"\nurl = "{backend}"\n{extra}'
        )
    runtime = subprocess.Popen(
        [*wrapper, binary, "--config", config, "serve"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(port, "the runtime", deadline)
    except SystemExit:
        stop(runtime)
        raise
    return runtime, f"127.0.0.1:{port}"


def stop(process):
    process.terminate()
    process.wait()


async def run_jobs(address, jobs, prompt_bytes=0, seconds=0.0, steps=1):
    """Runs `jobs` one-node jobs (a TestDelay of `seconds` in `steps` progress steps, before the
    fake's time scale) one at a time. With `prompt_bytes`, each node also carries a text input
    (one TestDelay does not declare, so neither the runtime's checks nor the fake read it) that
    makes its prompt about that large, as the long text prompts and many nodes of a real
    workflow do."""
    from comfy_reality import AsyncClient

    padding = {}
    if prompt_bytes:
        padding["notes"] = ("a cat in a spacesuit, " * (prompt_bytes // 22 + 1))[:prompt_bytes]

    async with AsyncClient(address) as client:
        stream = client.events(
            None, event_types=["TASK_EVENT_TYPE_COMPLETED"], categories=["EVENT_CATEGORY_TASK"]
        )
        ended, waiting = set(), {}

        async def read():
            async for event in stream:
                if event.execution_id in waiting:
                    waiting.pop(event.execution_id).set_result(None)
                else:
                    ended.add(event.execution_id)

        reader = asyncio.create_task(read())
        await asyncio.sleep(0.2)
        nonce = time.time_ns()
        for i in range(jobs):
            inputs = {"seconds": seconds, "steps": steps, "nonce": nonce + i, **padding}
            workflow = {"1": {"class_type": "TestDelay", "inputs": inputs}}
            execution = await client.execute(workflow)
            if execution.id not in ended:
                done = asyncio.get_running_loop().create_future()
                waiting[execution.id] = done
                await done
        reader.cancel()


def sockets(pid):
    """(fd, local port, peer port) of each TCP connection of `pid`."""
    out = subprocess.run(["ss", "-tnpH"], capture_output=True, text=True, check=True).stdout
    found = []
    for line in out.splitlines():
        fields = line.split()
        if len(fields) < 6:
            continue
        local, peer = fields[3].rsplit(":", 1)[1], fields[4].rsplit(":", 1)[1]
        for fd in re.findall(rf"pid={pid},fd=(\d+)", line):
            found.append((int(fd), int(local), int(peer)))
    return found


LINE = re.compile(r"^\s*(.+?)\s+(\d+)/(\d+)\s+\[(\d+)\]\s+([\d.]+):\s+(\S+):\s*(.*)$")


def parse(text, pids):
    """Time-ordered (time, pid, tid, kind, fields) for the processes in `pids`."""
    pending, records = {}, []
    for line in text.splitlines():
        m = LINE.match(line)
        if not m:
            continue
        _comm, pid, tid, _cpu, t, event, rest = m.groups()
        pid, tid, t = int(pid), int(tid), float(t)
        if event == "raw_syscalls:sys_enter" and pid in pids:
            nr, args = re.match(r"NR (\d+) \(([^)]*)\)", rest).groups()
            first = args.split(",")[0].strip()
            pending[tid] = (t, int(nr), int(first, 16) if first else -1)
        elif event == "raw_syscalls:sys_exit" and tid in pending:
            start, nr, fd = pending.pop(tid)
            ret = int(re.match(r"NR -?\d+ = (-?\d+)", rest).group(1))
            if nr in SYSCALLS:
                records.append((start, pid, tid, SYSCALLS[nr], (fd, ret)))
        elif event == "sched:sched_wakeup" and pid in pids:
            woken = int(re.search(r"pid=(\d+)", rest).group(1))
            records.append((t, pid, tid, "wakeup", (woken,)))
        elif event == "sched:sched_switch":
            nxt = int(re.search(r"next_pid=(\d+)", rest).group(1))
            records.append((t, pid, tid, "switch", (nxt,)))
    records.sort(key=lambda r: r[0])
    return records


def segments(records, runtime, writer, fake, fds):
    """One dict of moments per job (see the module's doc)."""
    threads = {int(tid) for tid in os.listdir(f"/proc/{runtime}/task")}
    jobs, job = [], None
    for t, pid, tid, kind, fields in records:
        if kind == "switch":
            if job is not None and fields[0] in threads:
                job["switches"] += 1
            continue
        if kind == "wakeup":
            if job is not None and tid == runtime and fields[0] == writer:
                job["writer_wakes"] += 1
                if "ws_read" in job and "writer_woken" not in job:
                    job["writer_woken"] = t
            continue
        fd, ret = fields
        if pid == runtime and tid == runtime:
            if kind == "recvfrom" and fd == fds["client"] and ret > 0 and (job is None or "event_out" in job):
                job = {"recv": t, "switches": 0, "writer_wakes": 0}
                jobs.append(job)
            elif job is None:
                continue
            elif kind in ("writev", "sendto") and fd == fds["http"] and "post" not in job:
                job["post"] = t
            elif kind == "sendto" and fd == fds["client"] and "post" in job:
                job.setdefault("answer", t)
                if "writer_woken" in job and "event_out" not in job:
                    job["event_out"] = t
            elif kind == "recvfrom" and fd == fds["ws"] and ret > 0 and "fake_done" in job:
                job.setdefault("ws_read", t)
        elif pid == fake and job is not None and "post" in job and "fake_done" not in job:
            if kind == "recvfrom" and fd == fds["fake_http"] and ret > 0:
                job.setdefault("fake_read", t)
            elif kind == "sendto" and fd == fds["fake_ws"] and t - job["post"] > FAKE_END_AFTER:
                job["fake_done"] = t
    # The first read is the client's SubscribeEvents call, not a submit.
    return [j for j in jobs[1:] if "event_out" in j]


def report(jobs):
    rows = [
        ("submit read -> POST written", "recv", "post"),
        ("submit read -> its answer written", "recv", "answer"),
        ("POST -> read by the fake", "post", "fake_read"),
        ("POST -> the fake's end (its own time)", "post", "fake_done"),
        ("the fake's end -> read by the runtime", "fake_done", "ws_read"),
        ("read -> the writer woken", "ws_read", "writer_woken"),
        ("writer woken -> completion event written", "writer_woken", "event_out"),
        ("submit read -> completion event written", "recv", "event_out"),
    ]
    if not jobs:
        sys.exit("no whole job in the recording")
    print(f"{len(jobs)} jobs; medians (min - max), microseconds")
    for name, a, b in rows:
        values = [(j[b] - j[a]) * 1e6 for j in jobs if a in j and b in j]
        if values:
            print(f"  {name:44s} {statistics.median(values):7.0f} ({min(values):.0f} - {max(values):.0f})")
    for name in ("switches", "writer_wakes"):
        values = [j[name] for j in jobs]
        print(f"  {name.replace('_', ' ') + ' per job':44s} {statistics.mean(values):7.1f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runtime", default=os.path.join(ROOT, "target/release/comfy-reality"))
    parser.add_argument("--fake", default=os.path.join(ROOT, "target/release/comfy-reality-fake-comfyui"))
    parser.add_argument("--jobs", type=int, default=30)
    args = parser.parse_args()
    scratch = tempfile.mkdtemp(prefix="job-timeline-")
    fake, fake_port = start_fake(args.fake, scratch)
    runtime = None
    try:
        runtime, address = start_runtime(args.runtime, scratch, "runtime", "sqlite", f"http://127.0.0.1:{fake_port}")
        asyncio.run(run_jobs(address, 200))
        writer = next(
            int(tid) for tid in os.listdir(f"/proc/{runtime.pid}/task")
            if open(f"/proc/{runtime.pid}/task/{tid}/comm", encoding="utf-8").read().strip() == "store-writer"
        )
        data = f"{scratch}/timeline.data"
        perf = subprocess.Popen(
            ["perf", "record", "-q", "-e", "raw_syscalls:sys_enter,raw_syscalls:sys_exit,sched:sched_switch,sched:sched_wakeup",
             "--exclude-perf", "-a", "-o", data, "--", "sleep", str(2 + args.jobs * 0.02)],
        )
        time.sleep(0.5)
        asyncio.run(run_jobs(address, args.jobs))
        perf.wait()
        text = subprocess.run(["perf", "script", "-i", data, "-F", "comm,pid,tid,cpu,time,event,trace"],
                              capture_output=True, text=True, check=True).stdout
        # The runtime's connections to the fake outlive the client's (gone by now; its fd is
        # the one the runtime reads calls on).
        to_fake = [(fd, local) for fd, local, peer in sockets(runtime.pid) if peer == fake_port]
        records = parse(text, {runtime.pid, fake.pid})
        # The runtime's requests written and reads that returned data, per connection.
        calls = collections.Counter(
            (kind, fields[0]) for _, pid, tid, kind, fields in records
            if pid == runtime.pid and (kind == "writev" or (kind == "recvfrom" and fields[1] > 0))
        )
        # The POSTs' connection is the one the runtime writes most requests on (a probe's or a
        # second pooled connection may write a few); the socket's is the one of the others it
        # reads most from.
        http = max(
            (fd for fd, _ in to_fake if calls["writev", fd]),
            key=lambda fd: calls["writev", fd],
            default=None,
        )
        ws_fd, ws_local = max(
            ((fd, local) for fd, local in to_fake if fd != http),
            key=lambda pair: calls["recvfrom", pair[0]],
            default=(None, None),
        )
        fake_sockets = sockets(fake.pid)
        fake_ws = next((fd for fd, local, peer in fake_sockets if peer == ws_local), None)
        http_local = next((local for fd, local in to_fake if fd == http), None)
        fake_http = next((fd for fd, local, peer in fake_sockets if peer == http_local), None)
        client = next(
            (fields[0] for _, pid, tid, kind, fields in records
             if pid == runtime.pid and tid == runtime.pid and kind == "recvfrom" and fields[0] not in (http, ws_fd)),
            None,
        )
        fds = {"client": client, "http": http, "ws": ws_fd, "fake_ws": fake_ws, "fake_http": fake_http}
        if None in fds.values():
            sys.exit(f"could not tell the connections apart: {fds}")
        report(segments(records, runtime.pid, writer, fake.pid, fds))
    finally:
        for process in (runtime, fake):
            if process is not None:
                stop(process)


if __name__ == "__main__":
    main()
