"""`GET /metrics`: the service's counters in Prometheus' text format (prometheus_client).

Requests, first audio and real-time factors are recorded as they happen; the scheduler's and the cache's
own counters and the queue depths are read when Prometheus scrapes, so that each has one source.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from .scheduler import PRIORITIES, Job

FIRST_AUDIO_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
RTF_BUCKETS = (0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    """One registry per service (several services may live in one process, as in the tests)."""

    def __init__(self, service):
        self.service = service
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("voxtral_requests", "Speech and prefetch requests answered, by class and HTTP "
                                "status (499: the client left before its first audio)", ["class", "status"],
                                registry=self.registry)
        self.first_audio = Histogram("voxtral_first_audio_seconds", "From a speech request's arrival to its first "
                                     "audio, by class (cache hits and shared syntheses included)", ["class"],
                                     buckets=FIRST_AUDIO_BUCKETS, registry=self.registry)
        self.realtime_factor = Histogram("voxtral_realtime_factor", "A finished synthesis's compute time over "
                                         "its audio's duration (below 1: faster than real time)",
                                         buckets=RTF_BUCKETS, registry=self.registry)
        self.registry.register(_Counters(service))

    def request(self, priority: str | None, status: int) -> None:
        self.requests.labels(priority or "unknown", str(status)).inc()

    def ended(self, job: Job) -> None:
        """The scheduler's on_end: a synthesis that finished adds its real-time factor."""
        if job.state == "done" and job.audio_seconds > 0:
            self.realtime_factor.observe(job.compute_seconds / job.audio_seconds)

    def text(self) -> bytes:
        return generate_latest(self.registry)


class _Counters:
    """The scheduler's and the cache's counters, read at each scrape."""

    def __init__(self, service):
        self.service = service

    def describe(self):
        return []

    def collect(self):
        scheduler, cache = self.service.scheduler, self.service.cache
        counters = scheduler.counters if scheduler is not None else {}
        for name, key, help in (
                ("voxtral_syntheses", "submitted", "Syntheses started (requests sharing one count once)"),
                ("voxtral_shared", "joined", "Requests that listened to a synthesis already in flight"),
                ("voxtral_preemptions", "preemptions", "Utterances paused at a frame for a higher class"),
                ("voxtral_aging_rises", "risen", "Times the first request of a class competed a class higher "
                                                 "after waiting its aging bound"),
                ("voxtral_deadline_drops", "expired", "Syntheses dropped because no listener could meet its "
                                                      "deadline"),
                ("voxtral_frames", "steps", "Frames made (80 ms of audio each)"),
                ("voxtral_compute_seconds", "compute_seconds", "Seconds the worker spent making frames (its rate "
                                                               "is the worker's utilization)"),
                ("voxtral_heap_trims", "trims", "Times the worker, out of work, gave the C heap's free pages back")):
            yield CounterMetricFamily(name, help, value=counters.get(key, 0))
        stats = cache.snapshot() if cache is not None else {}
        yield CounterMetricFamily("voxtral_cache_hits", "Speech requests answered from the phrase cache",
                                  value=stats.get("hits", 0))
        yield CounterMetricFamily("voxtral_cache_corrupt", "Cache entries found damaged, dropped and rendered again",
                                  value=stats.get("corrupt", 0))
        yield GaugeMetricFamily("voxtral_cache_writable", "1 while the phrase cache stores new phrases",
                                value=1 if cache is not None and stats.get("writable") else 0)
        depth = GaugeMetricFamily("voxtral_queue_depth", "Syntheses waiting or in progress, by class",
                                  labels=["class"])
        queued = scheduler.queued() if scheduler is not None else dict.fromkeys(PRIORITIES, 0)
        for priority in PRIORITIES:
            depth.add_metric([priority], queued[priority])
        yield depth
        ready = GaugeMetricFamily("voxtral_ready", "1 while the service takes requests", value=int(
            self.service.state == "ready"))
        yield ready
