"""One Synthesizer, several clients: priority classes with aging, preemption at frame boundaries, shared
syntheses, deadlines and a bounded queue.

The worker thread repeatedly takes one job and makes one frame of it (`Synthesizer.step_many`). Which job:
the first of each class's line (first come, first served) competes; the highest class wins, so a job of a
higher class that arrives meanwhile is served from the next frame on. The job it interrupted keeps its
`Utterance` (its row of the KV cache, or its rows set aside when the rows run out) and continues, with the
same samples it would have had, when it is again the one chosen.

With a Synthesizer of several rows (`serve --batch B`), the chosen job shares its step with the other jobs
competing at its class, up to B in all (one backbone and flow-head pass for all, each job's audio what it
would be alone): risen jobs first, then the jobs after it in its class's line when it competes in its own
class. Only jobs competing at one class share a step: a job of a higher class still takes the next frame
for its class alone, so its first audio waits for no lower-class work (the others keep their rows).

Aging keeps strict priority from starving a class: when the other classes have made `aging[c]` frames
since the first job of class c last made one, that job competes one class higher, and again after that
class's bound, up to the top. Among jobs competing at one class, the one that has been entitled to it
longest goes first (a risen job goes after the job of that class in progress, before the next one). Once
it has made its next chunk of audio it competes in its own class again. Only the first job of a line
ages, so each class has at most B utterances begun and unfinished (one without batching), as without aging.

A job is one synthesis; every request with the same cache key that arrives while it is in flight listens
to it (`join`) instead of starting another. Its audio goes into a `Recording` that each listener reads at
its own pace; a job's class is the highest of its listeners', and a job nobody listens to any more (and
that no prefetch keeps) is dropped at the next frame boundary.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

from ..audio import to_pcm16
from ..machine import trim_heap
from ..runtime import Synthesizer, Utterance

log = logging.getLogger("voxtral_edge.serve")

PRIORITIES = ("navigation", "assistant", "message", "media", "background")  # highest first
DEFAULT_PRIORITY = "message"
# frames the others may make while the first job of a class waits, before it competes one class higher
AGING_FRAMES = {"assistant": 25, "message": 50, "media": 100, "background": 250}
PACE_WEIGHT = 0.1  # of the newest step in the running means of a step's time
# When the worker runs out of work, at most this often, it gives the C heap's free pages back to the system.
# The service's sessions run without onnxruntime's memory arena (app.SERVICE_SYNTH_OPTIONS, --memory-arena): an
# arena keeps every chunk it ever needed and its pages become resident as its free blocks are handed out, so
# the RSS followed the high-water mark of its fragmentation (a 2-hour soak: +3.6 MiB/h, stepwise, with glibc's
# bytes in use flat). Without it each step's tensors go back to glibc, whose free pages this gives back.
TRIM_INTERVAL_S = 10.0


def _ignore() -> None:
    """The wake-up of a listener that has gone."""


class QueueFull(Exception):
    """A class's queue is at its bound; `retry_after` is a guess (seconds) of when there will be room."""

    def __init__(self, priority: str, limit: int, retry_after: int):
        super().__init__(f"the {priority} queue is full ({limit} requests waiting or in progress); retry after "
                         f"{retry_after} s")
        self.retry_after = retry_after


class ShuttingDown(Exception):
    """The service is stopping and takes no new work."""


class DeadlineMissed(Exception):
    """A listener's first audio cannot come before its deadline."""


class Recording:
    """A synthesis's audio as it is made: 16-bit PCM chunks that the worker appends and each listener reads
    from its own position (nothing is copied per listener). `end` is None while the synthesis runs, then
    "done", "cancelled", "failed" (with `error`) or "shutdown". `wakers` are called, from the worker thread,
    after every change."""

    def __init__(self):
        self.chunks: list[bytes] = []
        self.end: str | None = None
        self.error: Exception | None = None
        self.wakers: set[Callable[[], None]] = set()

    def append(self, pcm: bytes) -> None:
        self.chunks.append(pcm)
        self._wake()

    def close(self, end: str, error: Exception | None = None) -> None:
        if self.end is None:
            self.end, self.error = end, error
            self._wake()

    def _wake(self) -> None:
        for wake in list(self.wakers):
            try:
                wake()
            except Exception:  # noqa: BLE001 - one listener's fault must not stop the worker
                log.exception("a listener's wake-up failed")


@dataclass(eq=False)
class Listener:
    """A client of a job: its class, the monotonic time by which its first audio must come (or None),
    and `wake`, called from the worker thread when the job's recording changes or the listener is
    dropped (`error` then says why)."""

    priority: str
    deadline: float | None = None
    wake: Callable[[], None] = _ignore
    error: Exception | None = None
    recording: Recording | None = None  # set when it is queued or joins: what it reads ...
    utterance: Utterance | None = None  # ... and the utterance that makes it (its events are reached there)
    shared: bool = False  # it joined a synthesis already in flight


@dataclass(eq=False)
class Job:
    """One synthesis: its utterance, its listeners, its recording and its place in the scheduler."""

    utterance: Utterance | None  # None once ended (the history keeps no audio)
    priority: str  # the highest class of its listeners (background for a prefetch nobody listens to)
    listeners: list[Listener] = field(default_factory=list)
    keep: bool = False  # finish it for the cache even when nobody listens (a prefetch)
    cache_key: str | None = None
    recording: Recording | None = field(default_factory=Recording)  # None once ended
    id: int = 0
    state: str = "queued"  # queued, running, suspended, done, cancelled, expired, failed, shutdown
    since: int = 0  # the step count when it joined its class's line (its place there)
    held: tuple[int, int] | None = None  # (class index, since) while it makes the chunk it rose for
    submitted_step: int = 0  # the scheduler's step count when it arrived
    first_audio_step: int | None = None  # ... just after the step that made its first audio
    submitted_at: float = field(default_factory=time.perf_counter)
    first_audio_at: float | None = None
    suspensions: int = 0
    risen: int = 0  # times it competed above its class
    cancelled: bool = False
    expired: bool = False  # cancelled because its last listener's deadline could not be met
    cancel_step: int | None = None  # the step count when its last listener left ...
    closed_step: int | None = None  # ... and when the worker dropped it
    frames: int = 0  # frames it made
    compute_seconds: float = 0.0  # time spent in its steps
    audio_seconds: float = 0.0

    @property
    def active(self) -> bool:
        return self.state in ("queued", "running", "suspended")


class Scheduler:
    """The worker, its jobs (at most `queue_limit` per class, the one in progress included), the aging
    bounds (frames; a class absent from `aging` never rises) and the counters. `cache` (a PhraseCache or
    None) receives every job that finishes; `on_end(job)` is called for every job that ends; `finished`
    keeps the last `history` jobs ended (for their step counts and times)."""

    def __init__(self, synth: Synthesizer, *, queue_limit: int = 16, cache=None, history: int = 512,
                 aging: dict[str, int] | None = None, on_end: Callable[[Job], None] | None = None):
        self.synth, self.queue_limit, self.cache = synth, int(queue_limit), cache
        self.aging = dict(AGING_FRAMES if aging is None else aging)
        self.on_end = on_end
        self.jobs: list[Job] = []  # in progress or waiting, in arrival order
        self.by_key: dict[str, Job] = {}  # the jobs in flight with a cache key, for listeners to join
        self.counters = dict.fromkeys(("submitted", "joined", "refused", "completed", "cancelled", "expired",
                                       "failed", "shutdown", "preemptions", "risen", "steps", "cache_writes",
                                       "trims"), 0)
        self.counters["compute_seconds"] = 0.0  # time spent in steps: its rate is the worker's utilization
        self.served = dict.fromkeys(PRIORITIES, 0)  # the step count when a job of each class last made a frame
        self.pace = {"prefill": 0.0, "frame": 0.0}  # running means of a step's seconds (0: none measured)
        self.current: Job | None = None  # the job chosen last (the first of its step)
        self.stepping: list[Job] = []  # the jobs stepped last, together
        self.finished: deque[Job] = deque(maxlen=history)  # the last jobs ended, newest last
        self._job_seconds = 2.0  # running mean of a job's duration, for Retry-After
        self._next_id = 0
        self._stopping = False
        self._held = 0  # hold() blocks taken: no frame is made while any is
        self._waiting = False  # the worker is waiting for work (or for the hold to end)
        self._trimmed = (0, time.monotonic())  # (steps, time) when the heap was last trimmed
        self._wake = threading.Condition()
        self._thread = threading.Thread(target=self._work, name="voxtral-edge-scheduler", daemon=True)
        self._thread.start()

    # -- called from request handlers ------------------------------------------------------------
    def submit(self, job: Job) -> Job:
        """Queue a new job behind those of its class and return it; if a job with the same cache key is in
        flight, its listeners (and keep) join that one instead, which is returned (the new job's utterance
        is closed). QueueFull past the bound, ShuttingDown after stop(), DeadlineMissed when a listener's
        deadline is nearer than a first frame takes."""
        with self._wake:
            live = self.by_key.get(job.cache_key) if job.cache_key is not None else None
            if live is not None and live.active and not live.cancelled:
                for listener in job.listeners:
                    self._join(live, listener)
                live.keep = live.keep or job.keep
                self._reclass(live)
                self.synth.close(job.utterance)
                job.utterance = None
                return live
            self._admit(job.priority)
            for listener in job.listeners:
                self._check_deadline(listener, job)
            for listener in job.listeners:
                listener.recording, listener.utterance = job.recording, job.utterance
            self._next_id += 1
            job.id, job.submitted_step = self._next_id, self.counters["steps"]
            job.since, job.submitted_at = job.submitted_step, time.perf_counter()
            self.jobs.append(job)
            if job.cache_key is not None:
                self.by_key[job.cache_key] = job
            self.counters["submitted"] += 1
            self._wake.notify_all()
        return job

    def join(self, key: str, listener: Listener | None = None) -> Job | None:
        """Add a listener (or, with None, a prefetch's keep) to the job in flight under `key` and return it;
        None when there is none. The job rises to the listener's class if that is higher (QueueFull when
        that class has no room)."""
        with self._wake:
            job = self.by_key.get(key)
            if job is None or not job.active or job.cancelled:
                return None
            if listener is None:
                job.keep = True
                self._reclass(job)
            else:
                self._join(job, listener)
            return job

    def _join(self, job: Job, listener: Listener) -> None:
        if self._stopping:
            raise ShuttingDown("the service is shutting down")
        if PRIORITIES.index(listener.priority) < PRIORITIES.index(job.priority):
            self._admit(listener.priority)
        if job.first_audio_at is None:
            self._check_deadline(listener, job)
        job.listeners.append(listener)
        listener.recording, listener.utterance, listener.shared = job.recording, job.utterance, True
        self._reclass(job)
        self.counters["joined"] += 1
        self._wake.notify_all()

    def leave(self, job: Job, listener: Listener, late: bool = False) -> None:
        """A listener is gone (its client left, it has read everything, or with `late` its deadline passed):
        a job nobody listens to any more and no prefetch keeps costs no compute past the frame being made."""
        with self._wake:
            listener.wake = _ignore
            if listener in job.listeners:
                job.listeners.remove(listener)
                if job.active:
                    self._reclass(job)
            if job.active and not job.listeners and not job.keep and not job.cancelled:
                job.cancelled, job.expired, job.cancel_step = True, late, self.counters["steps"]
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
            return self._waiting and not self.jobs

    def stop(self, timeout: float | None = 30.0) -> None:
        """End every job at the next frame boundary (each stream ends with the audio made so far) and stop
        the worker."""
        with self._wake:
            self._stopping = True
            self._wake.notify_all()
        self._thread.join(timeout)

    def queued(self) -> dict[str, int]:
        """Jobs waiting or in progress, per class."""
        with self._wake:
            counts = dict.fromkeys(PRIORITIES, 0)
            for job in self.jobs:
                counts[job.priority] += 1
            return counts

    def snapshot(self) -> dict:
        """Limits, counters, the queues' lengths and, per class over the jobs in `finished`, the median and
        the largest number of steps (frames, of any job) between a job's arrival and its first audio."""
        queued = self.queued()
        with self._wake:
            waits = {p: sorted(j.first_audio_step - j.submitted_step for j in self.finished
                               if j.priority == p and j.first_audio_step is not None) for p in PRIORITIES}
            return {"queue_limit": self.queue_limit, "aging_frames": self.aging, "queued": queued,
                    "in_flight": self.current.priority if self.current and self.current.state == "running" else None,
                    **self.counters,
                    "steps_to_first_audio": {p: {"median": w[len(w) // 2], "max": w[-1]}
                                             for p, w in waits.items() if w}}

    # -- admission (under the lock) -----------------------------------------------------------------
    def _admit(self, priority: str) -> None:
        if self._stopping:
            raise ShuttingDown("the service is shutting down")
        waiting = sum(1 for j in self.jobs if j.priority == priority)
        if waiting >= self.queue_limit:
            self.counters["refused"] += 1
            ahead = sum(1 for j in self.jobs if PRIORITIES.index(j.priority) <= PRIORITIES.index(priority))
            raise QueueFull(priority, self.queue_limit, max(1, math.ceil(ahead * self._job_seconds)))

    def _first_audio_needs(self, job: Job) -> float:
        """Seconds before job's first audio at the least, were it chosen next: the frame in progress, then its
        prefill step (which makes its first frame) and the rest of its first chunk, at the pace measured so
        far (0 before any)."""
        return self.pace["frame"] * job.utterance.first_chunk_frames + self.pace["prefill"]

    def _check_deadline(self, listener: Listener, job: Job) -> None:
        if listener.deadline is None:
            return
        left = listener.deadline - time.monotonic()
        needs = self._first_audio_needs(job)
        if left < needs:
            raise DeadlineMissed(_missed(listener, needs, left))

    def _reclass(self, job: Job) -> None:
        """Put a job in the class of its highest listener (background when only a prefetch keeps it)."""
        classes = [PRIORITIES.index(l.priority) for l in job.listeners] + ([len(PRIORITIES) - 1] if job.keep else [])
        priority = PRIORITIES[min(classes)] if classes else job.priority
        if priority != job.priority:
            rising = PRIORITIES.index(priority) < PRIORITIES.index(job.priority)
            job.priority, job.held = priority, None
            job.since = self.counters["steps"] if rising else job.submitted_step  # back to its old place

    # -- the worker ------------------------------------------------------------------------------
    def _standing(self, job: Job) -> tuple[int, int]:
        """(the class index job competes at now, the step since when it is entitled to it)."""
        if job.held is not None:
            return job.held
        level = PRIORITIES.index(job.priority)
        since = max(job.since, self.served[job.priority])  # its wait starts when its class last made a frame
        while level > 0 and PRIORITIES[level] in self.aging and self.counters["steps"] - since >= \
                self.aging[PRIORITIES[level]]:
            since += self.aging[PRIORITIES[level]]
            level -= 1
        return level, since

    def _rank(self, job: Job) -> tuple:
        """Smallest first: the class it competes at; then the job in progress (the jobs, with batching), a risen
        job (the one entitled longest first), the others by their place in line."""
        level, since = self._standing(job)
        order = 0 if self._in_progress(job) else 1 if level < PRIORITIES.index(job.priority) else 2
        return level, order, since, job.id

    def _in_progress(self, job: Job) -> bool:
        return job.state == "running" and job in self.stepping

    def _next(self) -> Job | None:
        """The job to step, after dropping the cancelled ones and the listeners that cannot meet their
        deadline (under the lock)."""
        now = time.monotonic()
        for job in list(self.jobs):
            needs = self._first_audio_needs(job) if job.first_audio_at is None else 0.0
            for listener in [l for l in job.listeners if l.deadline is not None and now + needs > l.deadline
                             and job.first_audio_at is None]:
                listener.error = DeadlineMissed(_missed(listener, needs, listener.deadline - now))
                wake = listener.wake
                self.leave(job, listener, late=True)
                wake()
            if job.cancelled:
                self._drop(job, "expired" if job.expired else "cancelled")
        heads = self._heads()
        if not heads:
            return None
        job = min(heads.values(), key=self._rank)
        self._rise(job)
        return job

    def _heads(self) -> dict[str, Job]:
        """The first job of each class's line: the one with the earliest place."""
        heads: dict[str, Job] = {}
        for job in self.jobs:
            head = heads.get(job.priority)
            if head is None or (job.since, job.id) < (head.since, head.id):
                heads[job.priority] = job
        return heads

    def _rise(self, job: Job) -> None:
        """A job about to be stepped above its class keeps that standing until it has made its chunk."""
        level, since = self._standing(job)
        if level < PRIORITIES.index(job.priority) and job.held is None:
            job.held = (level, since)
            job.risen += 1
            self.counters["risen"] += 1

    def _batch(self, job: Job) -> list[Job]:
        """`job`, the one chosen, and the jobs competing at its class, up to the synthesizer's batch, in the
        order they would be chosen: those in progress, the first jobs of lower lines risen to it, then the
        jobs after it in its own line (when it competes in its own class). They make their next frames
        together (under the lock); so a job in progress is never interrupted by a risen one."""
        room = self.synth.batch - 1
        if not room:
            return [job]
        level = self._standing(job)[0]
        heads = set(self._heads().values())
        competing = []
        for other in self.jobs:
            if other is job or other.cancelled:
                continue
            if other in heads:  # a line's first competes at its standing (risen, or its own class)
                if (rank := self._rank(other))[0] == level:
                    competing.append((rank, other))
            elif PRIORITIES.index(other.priority) == level:  # the others wait in their own class's line
                competing.append(((level, 0 if self._in_progress(other) else 2, other.since, other.id), other))
        jobs = [job] + [other for _, other in sorted(competing, key=lambda c: c[0])[:room]]
        for other in jobs[1:]:
            self._rise(other)
        return jobs

    def _work(self) -> None:
        while True:
            try:
                with self._wake:
                    job = self._next() if not self._held else None
                    while job is None and not self._stopping:
                        if self._trim_due():
                            self._wake.release()  # requests arrive meanwhile
                            try:
                                trim_heap()
                            finally:
                                self._wake.acquire()
                            job = self._next() if not self._held else None
                            continue
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
                    for each in jobs:
                        each.state = "running"
                self._step(jobs)
            except Exception:  # noqa: BLE001 - (a MemoryError, say) the worker outlives it, or nobody is served
                log.exception("the scheduler's worker hit an error; it goes on")
                time.sleep(0.01)
        self._end_all()

    def _trim_due(self) -> bool:
        """Whether the worker, out of work, trims the heap now: steps were made since the last trim, which
        is at least TRIM_INTERVAL_S old (called with the lock held)."""
        steps, since = self._trimmed
        if self.counters["steps"] == steps or time.monotonic() - since < TRIM_INTERVAL_S:
            return False
        self._trimmed = (self.counters["steps"], time.monotonic())
        self.counters["trims"] += 1
        return True

    def _step(self, jobs: list[Job]) -> None:
        """One frame of each of `jobs`, together; then each one's audio, end or failure. A failure of the step
        fails them all; a failure of one's own request (`u.error`) fails it alone."""
        us = [job.utterance for job in jobs]
        between = [u.hidden is None for u in us]  # between pieces: this step prefills the next one (or a silence)
        start = time.perf_counter()
        try:
            chunks = self.synth.step_many(us)
        except Exception as e:  # noqa: BLE001 - a request's failure must not end the service
            for job in jobs:
                self._finish(job, "failed", e)
            return
        seconds = time.perf_counter() - start
        with self._wake:
            self.counters["steps"] += 1
            self.counters["compute_seconds"] += seconds
            # the step's kind: a prefill when any of them began a piece (None: only silences or failures)
            kinds = {"frame" if not b else "prefill" if u.hidden is not None else None for u, b in zip(us, between)}
            kind = "prefill" if "prefill" in kinds else "frame" if "frame" in kinds else None
            if kind is not None:
                self.pace[kind] = seconds if not self.pace[kind] else \
                    (1 - PACE_WEIGHT) * self.pace[kind] + PACE_WEIGHT * seconds
            for job, u, chunk in zip(jobs, us, chunks):
                self.served[job.priority] = self.counters["steps"]
                job.compute_seconds += seconds  # each waited for the whole step
                if len(chunk) or u.done:
                    job.held = None  # it made the chunk it rose for
        for job, u, chunk in zip(jobs, us, chunks):
            if u.error is not None:  # its own request failed (the others went on)
                self._finish(job, "failed", u.error)
                continue
            if len(chunk):
                if job.first_audio_step is None:
                    job.first_audio_step, job.first_audio_at = self.counters["steps"], time.perf_counter()
                job.audio_seconds += len(chunk) / self.synth.sample_rate
                job.recording.append(to_pcm16(chunk))
            if u.done:
                self._finish(job, "done")

    def _drop(self, job: Job, state: str, error: Exception | None = None) -> None:
        """Take an ended job out (under the lock): free what it held, count it, close its recording."""
        self.jobs.remove(job)
        if job.cache_key is not None and self.by_key.get(job.cache_key) is job:
            del self.by_key[job.cache_key]
        if job.utterance is not None:
            job.frames = len(job.utterance.run.frames)
            self.synth.close(job.utterance)
            job.utterance = None
        job.state, job.closed_step = state, self.counters["steps"]
        self.counters["completed" if state == "done" else state] += 1
        self.finished.append(job)
        if state == "done":
            self._job_seconds = 0.8 * self._job_seconds + 0.2 * (time.perf_counter() - job.submitted_at)
        recording, job.recording = job.recording, None
        recording.close(state, error)
        if self.on_end is not None:
            self.on_end(job)

    def _finish(self, job: Job, state: str, error: Exception | None = None) -> None:
        if state == "done" and self.cache is not None and job.cache_key is not None:
            # stored before the listeners hear the end: whoever asks next finds it there (or joins this job)
            self.cache.put_later(job.cache_key, b"".join(job.recording.chunks))
            self.counters["cache_writes"] += 1
        with self._wake:
            self._drop(job, state, error)

    def _end_all(self) -> None:
        with self._wake:
            for job in list(self.jobs):
                self._drop(job, "shutdown")


def _missed(listener: Listener, needs: float, left: float) -> str:
    return (f"the {listener.priority} request cannot start speaking within its deadline: "
            f"{max(0.0, left) * 1e3:.0f} ms left, its first audio needs at least {needs * 1e3:.0f} ms here")
