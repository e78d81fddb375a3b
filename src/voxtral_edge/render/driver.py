"""`render`: a catalog onto workers, the clips into a folder, with an index a rerun can trust."""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..defaults import MAX_STEPS
from ..errors import UsageError
from ..machine import available_memory, usable_cores
from ..manifest import Manifest
from ..progress import Progress
from .catalog import load_catalog
from .job import FORMATS, Settings, bundle_identity, make_job, runtime_identity, worker_memory_estimate
from .output import OutputDir


class MemoryWarning(UserWarning):
    """The workers asked for would not all fit in the memory this machine has free."""


@dataclass
class RenderSummary:
    """What a run did. `audio_s` and `wall_s` count the clips rendered by this run (not those skipped)."""

    out: Path
    backend: str
    workers: int
    total: int  # items in the catalog
    rendered: int
    skipped: int  # up to date from an earlier run
    failed: int
    audio_s: float
    wall_s: float  # from the first worker's start to the last clip
    startup_s: float  # of which starting the workers (opening the bundle)
    restarts: int  # workers replaced after dying
    peak_rss: int  # the largest resident memory a worker reported, bytes

    @property
    def items_per_s(self) -> float:
        return self.rendered / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def real_time_factor(self) -> float:
        """Wall time over audio time for the whole fleet: below 1 is faster than real time."""
        return self.wall_s / self.audio_s if self.audio_s > 0 else 0.0

    def __str__(self) -> str:
        line = (f"{self.total} items: {self.rendered} rendered, {self.skipped} up to date, {self.failed} failed"
                + (f" (see {self.out / 'errors.jsonl'})" if self.failed else ""))
        if self.rendered:
            line += (f"; {self.audio_s:.1f} s of audio in {self.wall_s:.1f} s ({self.startup_s:.1f} s starting) on "
                     f"{self.workers} {self.backend} "
                     f"worker{'s' if self.workers > 1 else ''}: {self.items_per_s:.2f} items/s, fleet real-time "
                     f"factor {self.real_time_factor:.2f}, peak worker memory {self.peak_rss / 1e9:.2f} GB")
        if self.restarts:
            line += f"; {self.restarts} worker(s) replaced after dying"
        return line


@dataclass
class RunState:
    """Passed to `observer` after each item: counters so far, and the pool (its workers can be seen)."""

    done: int
    failed: int
    todo: int
    pool: object


def render(catalog: str | Path, bundle: str | Path, out: str | Path, *, settings: Settings = Settings(),
           workers: int | None = None, threads: int | None = None, ray: bool = False, ray_address: str | None = None,
           verify: bool = True, progress: bool = True, observer: Callable[[RunState], None] | None = None,
           batch: int = 1) -> RenderSummary:
    """Render every item of `catalog` that `out` does not already hold as it should; write `out/index.jsonl`
    (catalog order) and, for items that failed, `out/errors.jsonl`. Local worker processes, or Ray actors
    with `ray=True` (on the cluster at `ray_address`, or the one this process runs, or a new local one).
    `workers` defaults to what the cores (local) or the cluster (Ray) and the memory hold; each renders up to
    `batch` items together (the same bytes as one at a time)."""
    if settings.format not in FORMATS:
        raise UsageError(f"--format {settings.format!r}: expected one of {', '.join(FORMATS)}")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise UsageError(f"--batch must be an integer >= 1, found {batch!r}")
    if settings.steps is not None and not 1 <= settings.steps <= MAX_STEPS:
        raise UsageError(f"--steps must be from 1 to {MAX_STEPS}, found {settings.steps}")
    manifest = Manifest.load(bundle, verify=verify)
    if settings.max_context is not None and not 1 <= settings.max_context <= manifest["model"]["backbone"]["max_context"]:
        raise UsageError(f"--max-context {settings.max_context}: the bundle supports 1.."
                         f"{manifest['model']['backbone']['max_context']}")
    items = load_catalog(catalog, voices=manifest["voices"])
    bundle_id, runtime = bundle_identity(bundle), runtime_identity()
    jobs = [make_job(item, settings, manifest, bundle_id, runtime) for item in items]
    lines = {item.id: item.line for item in items}
    if batch > 1 and not manifest.batched:
        raise UsageError(f"--batch {batch}: {bundle} was exported before batching (its graphs take one utterance "
                         f"per call); re-export it, or use --batch 1")
    memory = worker_memory_estimate(manifest, settings.max_context, batch)

    output = OutputDir(out)
    records, errors, rendered, audio_s, wall_s, startup_s, pool = {}, [], 0, 0.0, 0.0, 0.0, None
    try:
        todo = []
        for job in jobs:
            record = output.up_to_date(job)
            if record is None:
                todo.append(job)
            else:
                records[job["id"]] = record
        if todo:
            # grouped by voice: a worker then mostly gets items of the voice whose prefix it has cached
            todo.sort(key=lambda job: job["voice"])
            pool = _pool(ray, ray_address, bundle, workers, threads, len(todo), memory, settings, bundle_id, runtime,
                         batch)
            start = time.perf_counter()
            pool.start()
            startup_s = wall_s = time.perf_counter() - start
            bar = Progress("render", len(todo), " items", enabled=progress, rate=True)
            try:
                for job, outcome in pool.run(todo):
                    if "error" in outcome:
                        errors.append({"id": job["id"], "line": lines[job["id"]], "error": outcome["error"]})
                    else:
                        records[job["id"]] = output.write_clip(job, outcome)
                        rendered += 1
                        audio_s += outcome["duration"]
                    wall_s = time.perf_counter() - start
                    bar.advance(1, f"{len(errors)} failed")
                    if observer is not None:
                        observer(RunState(rendered + len(errors), len(errors), len(todo), pool))
            finally:
                bar.finish()
    finally:
        try:
            if pool is not None:
                pool.close()
        finally:
            errors.sort(key=lambda e: e["line"])
            output.finish([records[job["id"]] for job in jobs if job["id"] in records], errors)
    return RenderSummary(Path(out), "ray" if ray else "local", pool.workers if pool else 0, len(jobs),
                         rendered, len(jobs) - len(todo), len(errors), audio_s, wall_s,
                         startup_s, pool.restarts if pool else 0, pool.peak_rss if pool else 0)


def _pool(ray, ray_address, bundle, workers, threads, todo, memory, settings, bundle_id, runtime, batch):
    """The backend's pool of workers, sized."""
    if ray:
        from .fleet import RayPool

        return RayPool(bundle, workers, threads or 1, settings.max_context, bundle_id=bundle_id, runtime=runtime,
                       memory=memory, address=ray_address, batch=batch)
    from .local import LocalPool

    cores, free = usable_cores(), available_memory()
    if workers is None:
        fit = int(0.9 * free // memory) if free else cores
        workers = max(1, min(cores, fit))
    workers = min(workers, -(-todo // batch))  # no worker without a job
    if free and workers * memory > free:
        warnings.warn(MemoryWarning(
            f"{workers} worker(s) of this bundle need about {workers * memory / 1e9:.1f} GB "
            f"({memory / 1e9:.2f} GB each) and {free / 1e9:.1f} GB is available: the system may swap or kill "
            f"workers; give fewer with --workers"), stacklevel=3)
    return LocalPool(bundle, workers, threads or max(1, cores // workers), settings.max_context, batch)
