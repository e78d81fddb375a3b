"""The local backend: N worker processes on this machine, each holding one open Synthesizer.

Each worker is a spawned process with a pipe to the driver: it opens the bundle once (a KV cache of
`batch` rows), then renders up to `batch` jobs together, taking a new one at the frame boundary after a
row frees (continuous batching). The driver keeps each worker's rows full in catalog order and watches both
the pipes and the processes, so a worker that dies (killed, out of memory) is replaced and its items
rendered again by the new one.
"""

from __future__ import annotations

import multiprocessing
import signal
from collections import deque
from multiprocessing.connection import wait
from pathlib import Path
from typing import Iterable, Iterator

from ..errors import BundleError, VoxtralEdgeError
from ..machine import rss_bytes
from .job import ItemRenderer, requeue_or_fail


def _worker_main(conn, bundle: str, threads: int | None, max_context: int | None, batch: int) -> None:
    """A worker process: open the bundle, say so, then turn the jobs received into outcomes, up to `batch`
    at a time."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle
    try:
        renderer = ItemRenderer(bundle, threads=threads, max_context=max_context, verify=False, batch=batch)
    except VoxtralEdgeError as e:
        conn.send({"error": str(e)})
        return
    conn.send({"ready": renderer.info()})

    def jobs():
        while True:
            if renderer.live and not _readable(conn):
                yield None  # the jobs in progress go on; a new one is looked for at the next frame
                continue
            try:
                job = conn.recv()
            except EOFError:  # the driver is gone
                return
            if job is None:
                return
            yield job

    for outcome in renderer.render_many(jobs()):
        outcome["rss"] = rss_bytes()
        conn.send(outcome)


def _readable(conn) -> bool:
    """A message (or the news that the pipe is gone) waits on `conn`."""
    try:
        return conn.poll()
    except OSError:
        return True


class _Worker:
    def __init__(self, context, bundle, threads, max_context, batch):
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_worker_main, args=(child, str(bundle), threads, max_context, batch),
                                       daemon=True, name="voxtral-edge-render")
        self.process.start()
        child.close()
        self.jobs: dict[str, dict] = {}  # id -> job, sent and not yet answered
        self.info: dict = {}

    def wait_ready(self) -> dict:
        try:
            message = self.conn.recv()
        except (EOFError, OSError):
            raise VoxtralEdgeError(f"a render worker (pid {self.process.pid}) died while opening the bundle "
                                   f"(exit code {self.process.exitcode}; out of memory?)") from None
        if "error" in message:
            raise BundleError(message["error"])
        self.info = message["ready"]
        return self.info


class LocalPool:
    """`workers` processes with `threads` onnxruntime threads each, each rendering up to `batch` jobs
    together; counters: `restarts` (workers replaced after dying), `peak_rss` (largest resident memory a
    worker reported, bytes)."""

    kind = "local"

    def __init__(self, bundle: str | Path, workers: int, threads: int | None, max_context: int | None,
                 batch: int = 1):
        self.bundle, self.workers, self.threads, self.max_context = bundle, workers, threads, max_context
        self.batch = batch
        self._context = multiprocessing.get_context("spawn")  # fork would copy onnxruntime's threads' state
        self.processes: list[_Worker] = []
        self.restarts = 0
        self.peak_rss = 0

    def _spawn(self) -> _Worker:
        return _Worker(self._context, self.bundle, self.threads, self.max_context, self.batch)

    def start(self) -> None:
        """Start the workers and wait until each has opened the bundle."""
        self.processes = [self._spawn() for _ in range(self.workers)]
        for worker in self.processes:
            self.peak_rss = max(self.peak_rss, worker.wait_ready()["rss"])

    def run(self, jobs: Iterable[dict]) -> Iterator[tuple[dict, dict]]:
        """(job, outcome) for every job, in the order they finish."""
        pending, attempts = deque(jobs), {}
        while pending or any(w.jobs for w in self.processes):
            broken = []  # workers whose pipe refused a job: they died since they were last seen
            for worker in self.processes:  # every free row gets the next job
                while len(worker.jobs) < self.batch and pending:
                    job = pending.popleft()
                    try:
                        worker.conn.send(job)
                    except OSError:  # never the dead worker's: back at the head, not counted as an attempt
                        pending.appendleft(job)
                        broken.append(worker)
                        break
                    worker.jobs[job["id"]] = job
            busy = [w for w in self.processes if w.jobs or w in broken]
            ready = set(wait([w.conn for w in busy] + [w.process.sentinel for w in busy]))
            for worker in busy:
                lost = False
                while worker.jobs and (worker.conn in ready or _readable(worker.conn)):
                    ready.discard(worker.conn)
                    try:
                        outcome = worker.conn.recv()
                    except (EOFError, OSError):  # the pipe closed or reset: a death, handled below
                        lost = True
                        break
                    job = worker.jobs.pop(outcome["id"])
                    self.peak_rss = max(self.peak_rss, outcome.pop("rss", 0))
                    yield job, outcome
                if (worker.jobs or worker in broken) and (lost or worker.process.sentinel in ready
                                                          or not worker.process.is_alive()):
                    held = list(worker.jobs.values())
                    self._replace(worker)
                    for job in reversed(held):  # back at the head of the queue, in their order
                        failure = requeue_or_fail(job, attempts, pending, "worker process")
                        if failure:
                            yield job, failure

    def _replace(self, dead: _Worker) -> None:
        dead.process.join()
        dead.conn.close()
        fresh = self._spawn()
        self.processes[self.processes.index(dead)] = fresh
        self.restarts += 1
        fresh.wait_ready()

    def close(self) -> None:
        """Stop the workers: politely when idle, at once when one is still busy (an interrupted run)."""
        for worker in self.processes:
            if not worker.jobs and worker.process.is_alive():
                try:
                    worker.conn.send(None)
                except OSError:
                    pass
            else:
                worker.process.terminate()
        for worker in self.processes:
            worker.process.join(timeout=10)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
            worker.conn.close()
        self.processes = []
