#!/usr/bin/env python3
"""A model of the WAL frames (pages) a one-node job's commits write, for comparing store designs.

It builds the SQLite store's schema (read from src/store/sqlite/schema.rs) in a scratch file,
fills it with 20,000 finished jobs so that its b-trees have their working depth, then counts the
frames that 500 more jobs add to the WAL (its growth divided by a frame's size):

- "current": what the store writes now, two commits a job. The first creates the execution, its
  root and NODE tasks and seven events (the submit with its dispatch); the second updates the
  three rows and appends six events (the job's end).
- "journal": the design left open in issue 16, each commit one row of a journal table plus its
  events, the indexed tables brought up to date in one transaction every BATCH jobs (its frames
  counted apart and spread over the jobs).

Row sizes follow a real one-node job (events about 550 bytes of JSON each, a prompt of 100
bytes); EVENT_BYTES=250 models a compact event encoding, AUTO_VACUUM=NONE a store without the
pointer-map pages that incremental vacuum keeps, and PROMPT_BYTES=20000 the prompt of a real
workflow (kept out of the execution's row past 2 KiB, written once; the history then takes
20,000 times that on disk, and the journal's rows keep their sizes, so that only "current" follows
it). Python's own SQLite is used: page layout, not speed, is measured.

    python3 scripts/wal_frames.py
    EVENT_BYTES=250 AUTO_VACUUM=NONE python3 scripts/wal_frames.py
    PROMPT_BYTES=20000 python3 scripts/wal_frames.py
"""

import os
import random
import re
import sqlite3
import tempfile

HISTORY_JOBS = 20_000
JOBS = 500
BATCHES = (50, 500)
EVENT_BYTES = int(os.environ.get("EVENT_BYTES", "550"))
PROMPT_BYTES = int(os.environ.get("PROMPT_BYTES", "100"))
AUTO_VACUUM = os.environ.get("AUTO_VACUUM", "INCREMENTAL")
FRAME_BYTES = 4096 + 24

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def prompt_inline_bytes():
    """The store's `executions::PROMPT_INLINE_BYTES`: a larger prompt is kept out of its
    execution's row."""
    text = open(os.path.join(ROOT, "src/store/sqlite/executions.rs"), encoding="utf-8").read()
    return int(re.search(r"const PROMPT_INLINE_BYTES: usize = ([\d_]+);", text).group(1))


PROMPT_INLINE_BYTES = prompt_inline_bytes()


def schema():
    """The store's migrations, in order, as one script."""
    text = open(os.path.join(ROOT, "src/store/sqlite/schema.rs"), encoding="utf-8").read()
    entries = re.search(r"MIGRATIONS: \[&str; \d+\] = \[(.*?)\n\];", text, re.S).group(1)
    return "\n".join(re.findall(r'(?m)^\s*r"(.*?)"', entries, re.S))


class Model:
    def __init__(self, path):
        self.path = path
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute(f"PRAGMA auto_vacuum={AUTO_VACUUM}")
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("PRAGMA wal_autocheckpoint=0")
        self.db.executescript(schema())
        self.db.execute("CREATE TABLE journal (seq INTEGER PRIMARY KEY, body BLOB NOT NULL)")
        self.ids = 0
        self.sequence = 0

    def new_id(self):
        """A time-ordered id in UUID text form, as the runtime's version 7 ids are."""
        self.ids += 1
        head = "%012x" % (0x01A24AD8BB8C + self.ids)
        tail = "%020x" % random.getrandbits(80)
        return f"{head[:8]}-{head[8:12]}-7{tail[:3]}-{tail[3:7]}-{tail[7:19]}"

    def events(self, count):
        for _ in range(count):
            self.sequence += 1
            self.db.execute(
                "INSERT INTO events VALUES (?, ?, ?)", (self.sequence, 0, "e" * EVENT_BYTES)
            )

    def create(self, job, status):
        execution, root, node = job
        prompt = b"p" * PROMPT_BYTES
        inline = len(prompt) <= PROMPT_INLINE_BYTES
        self.db.execute(
            "INSERT INTO executions (id, status, workflow_id, root_task_id, updated_ms, body, prompt)"
            " VALUES (?, ?, 'inline-1', ?, 1, ?, ?)",
            (execution, status, root, "x" * 600, prompt if inline else b""),
        )
        if not inline:
            self.db.execute("INSERT INTO execution_prompts VALUES (last_insert_rowid(), ?)", (prompt,))
        for task, kind, parent, size in ((root, "workflow", None, 750), (node, "node", root, 780)):
            self.db.execute(
                "INSERT INTO tasks (id, status, task_type, parent_id, execution_id, tags, updated_ms,"
                " body) VALUES (?, ?, ?, ?, ?, '[]', 1, ?)",
                (task, status, kind, parent, execution, "t" * size),
            )

    def end(self, job):
        execution, root, node = job
        for task, size in ((root, 760), (node, 790)):
            self.db.execute(
                "UPDATE tasks SET status = 'completed', updated_ms = 2, body = ? WHERE id = ?",
                ("t" * size, task),
            )
        self.db.execute(
            "UPDATE executions SET status = 'completed', updated_ms = 2, body = ? WHERE id = ?",
            ("x" * 640, execution),
        )

    def commit(self, work):
        self.db.execute("BEGIN")
        work()
        self.db.execute("COMMIT")

    def frames(self):
        wal = self.path + "-wal"
        return os.path.getsize(wal) // FRAME_BYTES if os.path.exists(wal) else 0

    def restart_wal(self):
        self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def job(self):
        return (self.new_id(), self.new_id(), self.new_id())


def current(model):
    before = model.frames()
    for _ in range(JOBS):
        job = model.job()
        model.commit(lambda: (model.create(job, "running"), model.events(7)))
        model.commit(lambda: (model.end(job), model.events(6)))
    per_job = (model.frames() - before) / JOBS
    print(f"current: {per_job:.1f} frames a job ({per_job / 2:.1f} a commit)")


def journal(model, batch):
    before = model.frames()
    applying = 0
    waiting = []
    for _ in range(JOBS):
        job = model.job()
        for size, count in ((2200, 7), (2300, 6)):
            model.commit(
                lambda: (
                    model.db.execute("INSERT INTO journal (body) VALUES (?)", (b"j" * size,)),
                    model.events(count),
                )
            )
        waiting.append(job)
        if len(waiting) == batch:
            start = model.frames()
            model.commit(
                lambda: (
                    [model.create(job, "completed") for job in waiting],
                    model.db.execute("DELETE FROM journal"),
                )
            )
            applying += model.frames() - start
            waiting = []
    per_job = (model.frames() - before) / JOBS
    per_commit = (model.frames() - before - applying) / JOBS / 2
    print(
        f"journal, tables brought up to date every {batch} jobs: {per_job:.1f} frames a job"
        f" ({per_commit:.1f} a commit, {applying / JOBS:.1f} a job to bring them up to date)"
    )


def fill(model):
    """The history: finished jobs, in one transaction."""
    model.db.execute("BEGIN")
    for _ in range(HISTORY_JOBS):
        job = model.job()
        model.create(job, "running")
        model.events(7)
        model.end(job)
        model.events(6)
    model.db.execute("COMMIT")


def main():
    print(f"events of {EVENT_BYTES} bytes, prompts of {PROMPT_BYTES}, auto_vacuum {AUTO_VACUUM}")
    with tempfile.TemporaryDirectory() as scratch:
        model = Model(os.path.join(scratch, "store.db"))
        fill(model)
        model.restart_wal()
        current(model)
        for batch in BATCHES:
            model.restart_wal()
            journal(model, batch)


if __name__ == "__main__":
    main()
