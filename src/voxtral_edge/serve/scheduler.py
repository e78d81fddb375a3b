"""One Synthesizer, several clients: priority classes, preemption at frame boundaries, a bounded queue.

The worker thread repeatedly takes the first job of the highest class that has one and makes one frame
of it (`Synthesizer.step`). A job of a higher class that arrives meanwhile is therefore served from the
next frame on; the job it interrupted keeps its `Utterance` (its row of the KV cache, or its rows set aside
when the rows run out) and continues, with the same samples it would have had, when it is again the first
of the highest class.

With a Synthesizer of several rows (`serve --batch B`), the jobs after the first of that class share its
step, up to B in all (`Synthesizer.step_many`: one backbone and flow-head pass for all, each job's audio
what it would be alone). Only jobs of one class share a step: a job of a higher class still takes the next
frame for its class alone, so its first audio waits for no lower-class work.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

from ..audio import to_pcm16
from ..runtime import Synthesizer, Utterance

PRIORITIES = ("navigation", "assistant", "message", "media", "background")  # highest first
DEFAULT_PRIORITY = "message"


def _ignore(event: tuple) -> None:
    """The delivery of a job that has ended (the history keeps no client's unread audio alive)."""


class QueueFull(Exception):
    """A class's queue is at its bound; `retry_after` is a guess (seconds) of when there will be room."""

    def __init__(self, priority: str, limit: int, retry_after: int):
        super().__init__(f"the {priority} queue is full ({limit} requests waiting or in progress); retry after "
                         f"{retry_after} s")
        self.retry_after = retry_after


class ShuttingDown(Exception):
    """The service is stopping and takes no new work."""


@dataclass(eq=False)
class Job:
    """One request: its utterance, its class, and `deliver`, called from the worker thread with
    ("audio", pcm16 bytes), ("end", None | "shutdown") or ("error", exception)."""

    utterance: Utterance | None  # None once ended (the history keeps no audio)
    priority: str
    deliver: Callable[[tuple], None] = _ignore
    cache_key: str | None = None
    id: int = 0
    state: str = "queued"  # queued, running, suspended, done, cancelled, failed, shutdown
    submitted_step: int = 0  # the scheduler's step count when it arrived
    first_audio_step: int | None = None  # ... just after the step that made its first audio
    submitted_at: float = field(default_factory=time.perf_counter)
    first_audio_at: float | None = None
    suspensions: int = 0
    cancelled: bool = False
    cancel_step: int | None = None  # the step count when its client left ...
    closed_step: int | None = None  # ... and when the worker dropped it
    pcm: list[bytes] = field(default_factory=list)
    frames: int = 0  # frames it made


class Scheduler:
    """The worker, its per-class queues (each bounded by `queue_limit` jobs, the one in progress included)
    and its counters. `cache` (a PhraseCache or None) receives every job that finishes; `finished` keeps
    the last `history` jobs ended (for their step counts and times)."""

    def __init__(self, synth: Synthesizer, *, queue_limit: int = 16, cache=None, history: int = 512):
        self.synth, self.queue_limit, self.cache = synth, int(queue_limit), cache
        self.queues: dict[str, deque[Job]] = {p: deque() for p in PRIORITIES}
        self.counters = dict.fromkeys(("submitted", "refused", "completed", "cancelled", "failed", "preemptions",
                                       "steps", "cache_writes"), 0)
        self.current: Job | None = None  # the job stepped last (the first of its step)
        self.stepping: list[Job] = []  # the jobs stepped last, together
        self.finished: deque[Job] = deque(maxlen=history)  # the last jobs ended, newest last
        self._job_seconds = 2.0  # running mean of a job's duration, for Retry-After
        self._next_id = 0
        self._stopping = False
        self._held = 0  # hold() blocks taken: no frame is made while any is
        self._waiting = False  # the worker is waiting for work (or for the hold to end)
        self._wake = threading.Condition()
        self._thread = threading.Thread(target=self._work, name="voxtral-edge-scheduler", daemon=True)
        self._thread.start()

    # -- called from request handlers ------------------------------------------------------------
    def submit(self, job: Job) -> Job:
        """Queue a job behind those of its class; QueueFull past the bound, ShuttingDown after stop()."""
        with self._wake:
            if self._stopping:
                raise ShuttingDown("the service is shutting down")
            queue = self.queues[job.priority]
            if len(queue) >= self.queue_limit:
                self.counters["refused"] += 1
                ahead = sum(len(self.queues[p]) for p in PRIORITIES[:PRIORITIES.index(job.priority) + 1])
                raise QueueFull(job.priority, self.queue_limit, max(1, math.ceil(ahead * self._job_seconds)))
            self._next_id += 1
            job.id, job.submitted_step = self._next_id, self.counters["steps"]
            job.submitted_at = time.perf_counter()
            queue.append(job)
            self.counters["submitted"] += 1
            self._wake.notify_all()
        return job

    def cancel(self, job: Job) -> None:
        """Stop a job (its client left): it costs no compute past the frame being made."""
        with self._wake:
            if job.state in ("queued", "running", "suspended") and not job.cancelled:
                job.cancelled, job.cancel_step = True, self.counters["steps"]
                self._wake.notify_all()

    @contextmanager
    def hold(self) -> Iterator[None]:
        """No frame is made inside this block (the frame in progress finishes first): requests still queue,
        and are served in their order when it ends. For a pause of the audio (the head unit's audio focus
        elsewhere) and for queueing work in a known order."""
        with self._wake:
            self._held += 1
            while not self._waiting and self.current is not None and self.current.state == "running" \
                    and not self._stopping:
                self._wake.wait(0.05)  # the worker is inside a step: let it finish that frame
        try:
            yield
        finally:
            with self._wake:
                self._held -= 1
                self._wake.notify_all()

    @property
    def idle(self) -> bool:
        """The worker is waiting and no job is queued: nothing costs compute."""
        with self._wake:
            return self._waiting and not any(self.queues.values())

    def stop(self, timeout: float | None = 30.0) -> None:
        """End every job at the next frame boundary (each stream ends with the audio made so far) and stop
        the worker."""
        with self._wake:
            self._stopping = True
            self._wake.notify_all()
        self._thread.join(timeout)

    def snapshot(self) -> dict:
        """Limits, counters, the queues' lengths and, per class over the jobs in `finished`, the median and
        the largest number of steps (frames, of any job) between a job's arrival and its first audio."""
        with self._wake:
            waits = {p: sorted(j.first_audio_step - j.submitted_step for j in self.finished
                               if j.priority == p and j.first_audio_step is not None) for p in PRIORITIES}
            return {"queue_limit": self.queue_limit, "queued": {p: len(q) for p, q in self.queues.items()},
                    "in_flight": self.current.priority if self.current and self.current.state == "running" else None,
                    **self.counters,
                    "steps_to_first_audio": {p: {"median": w[len(w) // 2], "max": w[-1]} for p, w in waits.items() if w}}

    # -- the worker ------------------------------------------------------------------------------
    def _next(self) -> Job | None:
        """The first job of the highest class, after dropping cancelled ones (under the lock)."""
        for priority in PRIORITIES:
            queue = self.queues[priority]
            for job in [j for j in queue if j.cancelled]:
                queue.remove(job)
                self._close(job)
                job.deliver = _ignore
                job.state, job.closed_step = "cancelled", self.counters["steps"]
                self.counters["cancelled"] += 1
                self.finished.append(job)
            if queue:
                return queue[0]
        return None

    def _work(self) -> None:
        while True:
            with self._wake:
                job = self._next() if not self._held else None
                while job is None and not self._stopping:
                    self._waiting = True
                    self._wake.notify_all()  # a hold() waiting for the frame in progress
                    self._wake.wait()
                    self._waiting = False
                    job = self._next() if not self._held else None
                if self._stopping:
                    break
                jobs = self._batch(job)
                for previous in self.stepping:
                    if previous not in jobs and previous.state == "running":
                        previous.state, previous.suspensions = "suspended", previous.suspensions + 1
                        self.counters["preemptions"] += 1
                self.current, self.stepping = job, jobs
                for j in jobs:
                    j.state = "running"
            self._step(jobs)
        self._end_all()

    def _batch(self, job: Job) -> list[Job]:
        """`job` and the jobs after it in its class's queue (not cancelled), up to the synthesizer's batch: they
        make their next frames together (under the lock)."""
        return [job] + [j for j in self.queues[job.priority] if j is not job and not j.cancelled][:self.synth.batch - 1]

    def _step(self, jobs: list[Job]) -> None:
        """One frame of each of `jobs`, together; then each one's audio, end or failure is delivered."""
        try:
            chunks = self.synth.step_many([job.utterance for job in jobs])
        except Exception as e:  # noqa: BLE001 - a request's failure must not end the service
            for job in jobs:
                self._fail(job, e)
            return
        self.counters["steps"] += 1
        for job, chunk in zip(jobs, chunks):
            if job.utterance.error is not None:  # its own request failed (the others went on)
                self._fail(job, job.utterance.error)
            else:
                self._deliver(job, chunk)

    def _fail(self, job: Job, error: Exception) -> None:
        self._finish(job, "failed")
        job.deliver(("error", error))
        job.deliver = _ignore

    def _deliver(self, job: Job, chunk) -> None:
        u = job.utterance
        if len(chunk):
            pcm = to_pcm16(chunk)
            job.pcm.append(pcm)
            if job.first_audio_step is None:
                job.first_audio_step, job.first_audio_at = self.counters["steps"], time.perf_counter()
            job.deliver(("audio", pcm))
        if u.done:
            pcm = b"".join(job.pcm)
            self._finish(job, "done")
            if self.cache is not None and job.cache_key is not None:
                self.cache.put(job.cache_key, pcm)
                self.counters["cache_writes"] += 1
            job.deliver(("end", None))
            job.deliver = _ignore

    def _close(self, job: Job) -> None:
        """Free what the job held: its KV rows, its audio."""
        if job.utterance is not None:
            job.frames = len(job.utterance.run.frames)
            self.synth.close(job.utterance)
            job.utterance, job.pcm = None, []

    def _finish(self, job: Job, state: str) -> None:
        self._close(job)
        with self._wake:
            self.queues[job.priority].remove(job)
            job.state, job.closed_step = state, self.counters["steps"]
            self.counters["completed" if state == "done" else state] += 1
            self.finished.append(job)
            if state == "done":
                self._job_seconds = 0.8 * self._job_seconds + 0.2 * (time.perf_counter() - job.submitted_at)

    def _end_all(self) -> None:
        with self._wake:
            jobs = [job for queue in self.queues.values() for job in queue]
            for queue in self.queues.values():
                queue.clear()
        for job in jobs:
            self._close(job)
            job.state = "shutdown"
            job.deliver(("end", "shutdown"))
            job.deliver = _ignore
