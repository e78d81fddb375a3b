"""The Ray backend (extra `[fleet]`): one actor per worker slot of the cluster, each holding an open
Synthesizer, fed jobs by the driver; the clips come back to the driver, which alone writes the output.

The bundle must be at the same path on every node, with voxtral-edge installed there. Each actor checks,
when it starts, that its node's bundle has the driver's manifest (sha256) and that every file matches
that manifest, and that its onnxruntime is the driver's; a mismatch stops the run with an error naming the
node. An actor that dies (node lost, `ray.kill`, out of memory) is replaced by a new one and its items are
sent again; an item that fails for its own reason comes back as an error, like on the local backend.

With a batch of B (`render --batch`), each call gives an actor B jobs, which it renders together with
continuous batching (a row freed by a short item takes the next of those B), and the next call is already
queued: rows stand idle only while the longest item of a call finishes.
"""

from __future__ import annotations

import socket
from collections import deque
from pathlib import Path
from typing import Iterable, Iterator

from ..errors import BundleError, UsageError, VoxtralEdgeError
from ..machine import rss_bytes
from .job import ItemRenderer, bundle_identity, requeue_or_fail, runtime_identity

IN_FLIGHT = 2  # calls queued per actor: the next one is there when the current one ends


def import_ray():
    try:
        import ray
    except ImportError:
        raise UsageError("--ray needs Ray: pip install 'voxtral-edge[fleet]'") from None
    return ray


class RenderActor:
    """What runs inside each Ray actor. Errors found at start are kept and reported by `start()`, so that the
    driver can name the node (an exception in __init__ would reach it as an opaque dead actor)."""

    def __init__(self, bundle: str, bundle_id: str, runtime: dict, threads: int, max_context: int | None,
                 batch: int = 1):
        self.renderer, self.error = None, None
        try:
            found = bundle_identity(bundle)
            if found != bundle_id:
                raise BundleError(f"the bundle at {bundle} differs from the driver's (manifest sha256 "
                                  f"{found[:12]}..., the driver's {bundle_id[:12]}...): put the same bundle at the "
                                  f"same path on every node")
            here = runtime_identity()
            if here != runtime:
                raise VoxtralEdgeError(f"runtime {here} differs from the driver's {runtime}: the clips would not "
                                       f"be the same bytes; install the same versions on every node")
            self.renderer = ItemRenderer(bundle, threads=threads, max_context=max_context, verify=True, batch=batch)
        except VoxtralEdgeError as e:
            self.error = str(e)

    def start(self) -> dict:
        import ray

        node = f"{socket.gethostname()} ({ray.util.get_node_ip_address()})"
        return {"node": node, "error": self.error, "rss": rss_bytes()}

    def render(self, jobs: list[dict]) -> list[dict]:
        """The outcomes of `jobs`, rendered together (up to the batch at a time), in the order they finished
        (a bug fails the items it hit, with an internal error, and the rest go on)."""
        outcomes = list(self.renderer.render_many(jobs))
        for outcome in outcomes:
            outcome["rss"] = rss_bytes()
        return outcomes


class _Slot:
    def __init__(self, actor):
        self.actor, self.generation, self.node = actor, 0, "?"


class RayPool:
    """`workers` actors of `threads` CPUs each, on the cluster at `address` (None: the one running in this
    process, else RAY_ADDRESS, else a new local one). Counters: `restarts`, `peak_rss`; `slots[i].actor` is
    the i-th actor now."""

    kind = "ray"

    def __init__(self, bundle: str | Path, workers: int | None, threads: int, max_context: int | None, *,
                 bundle_id: str, runtime: dict, memory: int, address: str | None = None, batch: int = 1):
        self.ray = import_ray()
        self.bundle, self.threads, self.max_context = str(Path(bundle).resolve()), threads, max_context
        self.batch = batch
        self.bundle_id, self.runtime, self.memory = bundle_id, runtime, memory
        self._started_ray = False
        self.slots: list[_Slot] = []
        self.restarts = 0
        self.peak_rss = 0
        if not self.ray.is_initialized():
            options = {"logging_level": "WARNING"}
            if not address:
                options["include_dashboard"] = False
            self.ray.init(address=address or None, **options)
            self._started_ray = True
        try:
            self.workers = self._count_workers(workers)
        except BaseException:
            self.close()
            raise

    def _count_workers(self, asked: int | None) -> int:
        """The actors to start: as many as the nodes hold (CPUs / threads, and memory / a worker's
        estimated size, node by node), or the number asked if the cluster holds that many."""
        fits = 0
        for node in self.ray.nodes():
            if node.get("Alive"):
                resources = node.get("Resources", {})
                fits += min(int(resources.get("CPU", 0) // self.threads),
                            int(resources.get("memory", 0) // max(self.memory, 1)))
        if fits == 0:
            raise UsageError(f"no node of the Ray cluster has {self.threads} CPU(s) and "
                             f"{self.memory / 1e9:.1f} GB of memory free for a worker of this bundle")
        if asked is not None and asked > fits:
            raise UsageError(f"--workers {asked}: the Ray cluster holds {fits} workers of this bundle "
                             f"({self.threads} CPU(s) and {self.memory / 1e9:.1f} GB each)")
        return asked or fits

    def _new_actor(self):
        actor_class = self.ray.remote(RenderActor).options(num_cpus=self.threads, memory=self.memory,
                                                           max_restarts=0, max_task_retries=0)
        return actor_class.remote(self.bundle, self.bundle_id, self.runtime, self.threads, self.max_context,
                                  self.batch)

    def _check_started(self, slots: list[_Slot]) -> None:
        for slot, info in zip(slots, self.ray.get([s.actor.start.remote() for s in slots])):
            slot.node = info["node"]
            if info["error"]:
                raise BundleError(f"node {info['node']}: {info['error']}")
            self.peak_rss = max(self.peak_rss, info["rss"])

    def start(self) -> None:
        self.slots = [_Slot(self._new_actor()) for _ in range(self.workers)]
        self._check_started(self.slots)

    def run(self, jobs: Iterable[dict]) -> Iterator[tuple[dict, dict]]:
        """(job, outcome) for every job, in the order they finish; items of a dead actor are sent again."""
        ray = self.ray
        pending, attempts = deque(jobs), {}
        in_flight: dict = {}  # ObjectRef -> (slot, generation, jobs)

        def feed(slot: _Slot) -> None:
            queued = sum(1 for s, g, _ in in_flight.values() if s is slot)
            while queued < IN_FLIGHT and pending:
                batch = [pending.popleft() for _ in range(min(self.batch, len(pending)))]
                in_flight[slot.actor.render.remote(batch)] = (slot, slot.generation, batch)
                queued += 1

        for slot in self.slots:
            feed(slot)
        while in_flight:
            [ref], _ = ray.wait(list(in_flight), num_returns=1)
            slot, generation, batch = in_flight.pop(ref)
            try:
                outcomes = ray.get(ref)
            except ray.exceptions.RayActorError:
                if generation == slot.generation:  # the first of its lost calls: replace the actor once
                    self._replace(slot)
                for job in reversed(batch):  # back at the head of the queue, in their order
                    failure = requeue_or_fail(job, attempts, pending, "Ray actor")
                    if failure:
                        yield job, failure
                feed(slot)
                continue
            by_id = {job["id"]: job for job in batch}
            for outcome in outcomes:
                self.peak_rss = max(self.peak_rss, outcome.pop("rss", 0))
                yield by_id[outcome["id"]], outcome
            feed(slot)

    def _replace(self, slot: _Slot) -> None:
        self.ray.kill(slot.actor, no_restart=True)
        slot.actor, slot.generation = self._new_actor(), slot.generation + 1
        self.restarts += 1
        self._check_started([slot])

    def close(self) -> None:
        """Stop the actors, and Ray itself if this pool started it."""
        for slot in self.slots:
            self.ray.kill(slot.actor, no_restart=True)
        self.slots = []
        if self._started_ray:
            self.ray.shutdown()
            self._started_ray = False
