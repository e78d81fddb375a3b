"""What one item of a catalog becomes, the same on every backend: a job (plain data, sent to a worker), the
worker that turns jobs into encoded audio with one open Synthesizer, and the run's settings.

Everything that can change a clip's bytes is in the job and is recorded in the index: text, voice, lang,
seed, steps, cfg, max_frames, max_context, normalize, format, the lexicon's effect on the item (its respelled
text; for SSML, the lexicon itself), the bundle's identity (its manifest's sha256)
and the runtime's versions (which include the text front-end's rules). Thread counts and worker counts are not: they do not change the samples.
"""

from __future__ import annotations

import hashlib
import os
import socket
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator


from .. import __version__, defaults
from ..chain import Output
from ..errors import BundleError, UsageError, VoxtralEdgeError
from ..manifest import MANIFEST, Manifest
from ..machine import rss_bytes
from ..runtime import DECODE_CHUNK, RunawayWarning, Synthesizer, Utterance
from ..text.lexicon import Lexicon
from ..text.normalize import voice_language
from ..text.ssml import is_ssml
from .catalog import Item

FORMATS = ("wav", "pcm", "flac", "opus", "mp3")


@dataclass(frozen=True)
class Settings:
    """Run-wide settings; steps and cfg are the defaults for items that do not give their own."""

    format: str = "wav"
    steps: int | None = None  # None: the model's
    cfg: float = defaults.CFG_ALPHA
    max_frames: int | None = None  # None: until the model ends the utterance (or the runaway guard)
    max_context: int | None = None  # None: the bundle's
    normalize: bool = True  # False: the texts are spoken as written (see voxtral_edge.text)
    sample_rate: int | None = None  # None: the model's
    speed: float = 1.0
    loudness: float | None = None  # LUFS; None: as made
    lexicon: Lexicon | None = None  # the user's respellings (voxtral_edge.text.lexicon), applied when normalizing


def bundle_identity(bundle: str | Path) -> str:
    """The sha256 of the bundle's manifest.json, which lists the sha256 of every other file: it names the
    bundle's exact contents."""
    try:
        return hashlib.sha256((Path(bundle) / MANIFEST).read_bytes()).hexdigest()
    except OSError as e:
        raise BundleError(f"{Path(bundle) / MANIFEST}: cannot read ({e.strerror or e})") from None


def runtime_identity() -> dict:
    """The versions whose kernels and encoders make the bytes."""
    import onnxruntime

    return {"voxtral_edge": __version__, "onnxruntime": onnxruntime.__version__}


def encoder_version(format: str) -> str:
    try:
        import soundfile
    except ImportError:
        raise UsageError(f"--format {format} needs the soundfile package: pip install 'voxtral-edge[audio]'") \
            from None
    return soundfile.__libsndfile_version__


def make_job(item: Item, settings: Settings, manifest: Manifest, bundle_id: str, runtime: dict) -> dict:
    """The job for one item: plain data, picklable, and (less `id` and `line`) what its index record must
    match for the file to count as up to date."""
    steps = item.steps if item.steps is not None else settings.steps
    steps = manifest["model"]["flow_head"]["n_decoding_steps"] if steps is None else steps
    max_context = settings.max_context or manifest["model"]["backbone"]["max_context"]
    job_settings = {"steps": int(steps), "cfg": float(item.cfg if item.cfg is not None else settings.cfg),
                    "max_frames": settings.max_frames, "max_context": int(max_context),
                    "normalize": settings.normalize, "format": settings.format,
                    "sample_rate": int(settings.sample_rate or manifest["audio"]["sample_rate"])}
    if settings.speed != 1 or settings.loudness is not None:  # only then: older records stay up to date
        job_settings.update(speed=settings.speed, loudness=settings.loudness)
    if settings.lexicon and settings.normalize:  # recorded only where it changes the item, as say applies it
        if is_ssml(item.text):  # each span in its own language: the whole lexicon goes with the item
            job_settings["lexicon"] = settings.lexicon.to_data()
        else:
            respelled = settings.lexicon.apply(item.text, item.lang or voice_language(item.voice))
            if respelled != item.text:
                job_settings["respelled"] = respelled
    Output(job_settings["sample_rate"], settings.speed, settings.loudness, settings.format)  # refused here if bad
    if settings.format in ("flac", "opus", "mp3"):
        job_settings["libsndfile"] = encoder_version(settings.format)
    return {"id": item.id, "file": f"{item.id}.{settings.format}", "voice": item.voice, "lang": item.lang,
            "seed": item.effective_seed, "text": item.text, "settings": job_settings, "bundle": bundle_id,
            "runtime": runtime}


class ItemRenderer:
    """A worker's state: one open Synthesizer of `batch` rows, and `render_many(jobs)` that renders up to
    `batch` jobs together (continuous batching) and returns each one's outcome (its clip's encoded bytes)."""

    def __init__(self, bundle: str | Path, *, threads: int | None, max_context: int | None, verify: bool,
                 batch: int = 1):
        self.synth = Synthesizer.open(bundle, threads=threads, max_context=max_context, verify=verify, batch=batch)
        self.rendered = 0
        self.live = 0  # jobs being rendered now

    def render(self, job: dict) -> dict:
        """One job's outcome, rendered alone."""
        return next(self.render_many([job]))

    def render_many(self, jobs: Iterable[dict | None]) -> Iterator[dict]:
        """The outcomes of `jobs`, in the order they finish, up to `batch` of them rendered together: a job
        is taken when a row is free (`jobs` may yield None: none waiting now, the rows in use go on). An
        outcome is {"id", "data", "duration", "frames", "finished", "spoken_text"}, or {"id", "error"} when
        the item cannot be rendered for a reason of its own (a VoxtralEdgeError: nothing left to say once
        normalized, a prompt the context cannot hold). A bug fails the items in progress with an internal
        error and the rest go on. The text is normalized for the item's lang (none: its voice's language)
        unless the settings say not to; every clip is the same bytes whatever the batch."""
        jobs, taken, refused, exhausted = iter(jobs), {}, [], False

        def utterances() -> Iterator[Utterance | None]:
            nonlocal exhausted
            for job in jobs:
                if job is None:
                    yield None
                    continue
                s = job["settings"]
                try:  # a whole clip per codec call after the first, as synthesize decodes
                    lexicon = Lexicon.from_data(s["lexicon"]) if "lexicon" in s else None
                    u = self.synth.start(s.get("respelled", job["text"]), job["voice"], chunk_frames=DECODE_CHUNK,
                                         first_chunk_frames=DECODE_CHUNK, seed=job["seed"], steps=s["steps"],
                                         cfg_alpha=s["cfg"], max_frames=s["max_frames"], normalize=s["normalize"],
                                         lang=job["lang"], lexicon=lexicon)
                except VoxtralEdgeError as e:
                    refused.append({"id": job["id"], "error": str(e)})
                    yield None  # (its outcome goes out before another job is waited for)
                    continue
                taken[id(u)] = job, u
                self.live += 1
                yield u
            exhausted = True

        while True:
            try:
                with warnings.catch_warnings():  # a runaway piece is recorded as finished: false
                    warnings.simplefilter("ignore", RunawayWarning)
                    for u, chunk in self.synth.run_many(utterances()):
                        yield from _drain(refused)
                        if chunk is None:
                            yield self._outcome(*taken.pop(id(u)))
                yield from _drain(refused)
                if exhausted:
                    return
            except Exception as e:  # a bug shows on the items it hit; the run goes on
                for job, u in list(taken.values()):
                    self.synth.close(u)
                    self.live -= 1
                    yield {"id": job["id"], "error": f"internal error: {type(e).__name__}: {e}"}
                taken.clear()
                yield from _drain(refused)

    def _outcome(self, job: dict, u: Utterance) -> dict:
        result = self.synth.close(u)
        self.live -= 1
        if u.error is not None:
            return {"id": job["id"], "error": str(u.error)}
        self.rendered += 1
        return {"id": job["id"], "data": encode(result, job["settings"]),
                "duration": round(result.duration, 6), "frames": int(len(result.codes)),
                "finished": bool(result.finished), "spoken_text": result.spoken_text}

    def info(self) -> dict:
        """Where this worker runs and what it holds in memory."""
        return {"node": socket.gethostname(), "pid": os.getpid(), "rss": rss_bytes()}


def _drain(outcomes: list[dict]) -> Iterator[dict]:
    while outcomes:
        yield outcomes.pop(0)


def encode(result, settings: dict) -> bytes:
    """A clip's file: the utterance through the audio chain (rate, speed, loudness of the whole clip) into
    WAV, raw 16-bit PCM, FLAC, Ogg Opus or MP3."""
    from ..speech import encode_whole

    output = Output(settings["sample_rate"], settings.get("speed", 1.0), settings.get("loudness"), settings["format"])
    return encode_whole(result, output)[0]


# -- memory ----------------------------------------------------------------------------------------------
def worker_memory_estimate(manifest: Manifest, max_context: int | None = None, batch: int = 1) -> int:
    """Bytes one worker is expected to hold: its graphs' weights (onnxruntime copies and prepacks them:
    about 1.25x the files), the KV cache (`batch` rows, each as if its context were full: only the
    positions written are resident), and the interpreter with its libraries. The embedding tables are
    memory-mapped and shared between workers, so they are not counted."""
    files = manifest["files"]
    graph_bytes = sum(files[g["file"]]["size"] + (files[g["data"]]["size"] if g.get("data") else 0)
                      for g in manifest["graphs"].values())
    b = manifest["model"]["backbone"]
    positions = max_context or b["max_context"]
    kv_bytes = 2 * b["n_layers"] * b["n_kv_heads"] * positions * b["head_dim"] * 4
    return int(1.25 * graph_bytes + batch * kv_bytes + 200e6)


MAX_ATTEMPTS = 3  # an item whose worker died this many times is reported as failed (it may be the cause)


def requeue_or_fail(job: dict, attempts: dict, pending, worker: str) -> dict | None:
    """Count one death of the `worker` (e.g. "Ray actor") that held `job`: put the job back at the head of
    `pending`, or, once it has cost MAX_ATTEMPTS workers, return its failure outcome instead."""
    attempts[job["id"]] = attempts.get(job["id"], 0) + 1
    if attempts[job["id"]] < MAX_ATTEMPTS:
        pending.appendleft(job)
        return None
    return {"id": job["id"], "error": f"its {worker} died {MAX_ATTEMPTS} times while rendering it (out of memory?)"}
