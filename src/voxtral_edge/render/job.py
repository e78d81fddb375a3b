"""What one item of a catalog becomes, the same on every backend: a job (plain data, sent to a worker), the
worker that turns jobs into encoded audio with one open Synthesizer, and the run's settings.

Everything that can change a clip's bytes is in the job and is recorded in the index: text, voice, lang,
seed, steps, cfg, max_frames, max_context, normalize, format, the bundle's identity (its manifest's sha256)
and the runtime's versions (which include the text front-end's rules). Thread counts and worker counts are not: they do not change the samples.
"""

from __future__ import annotations

import hashlib
import os
import socket
import warnings
from dataclasses import dataclass
from pathlib import Path


from .. import __version__, defaults
from ..chain import Output
from ..errors import BundleError, UsageError, VoxtralEdgeError
from ..manifest import MANIFEST, Manifest
from ..machine import rss_bytes
from ..runtime import RunawayWarning, Synthesizer
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
    Output(job_settings["sample_rate"], settings.speed, settings.loudness, settings.format)  # refused here if bad
    if settings.format in ("flac", "opus", "mp3"):
        job_settings["libsndfile"] = encoder_version(settings.format)
    return {"id": item.id, "file": f"{item.id}.{settings.format}", "voice": item.voice, "lang": item.lang,
            "seed": item.effective_seed, "text": item.text, "settings": job_settings, "bundle": bundle_id,
            "runtime": runtime}


class ItemRenderer:
    """A worker's state: one open Synthesizer, and `render(job)` that returns the clip's encoded bytes."""

    def __init__(self, bundle: str | Path, *, threads: int | None, max_context: int | None, verify: bool):
        self.synth = Synthesizer.open(bundle, threads=threads, max_context=max_context, verify=verify)
        self.rendered = 0

    def render(self, job: dict) -> dict:
        """{"id", "data", "duration", "frames", "finished", "spoken_text"}, or {"id", "error"} when the item
        cannot be rendered for a reason of its own (a VoxtralEdgeError: nothing left to say once normalized,
        a prompt the context cannot hold); anything else is a bug and raises. The text is normalized for the
        item's lang (none: its voice's language) unless the settings say not to."""
        s = job["settings"]
        try:
            with warnings.catch_warnings():  # a runaway piece is recorded as finished: false
                warnings.simplefilter("ignore", RunawayWarning)
                result = self.synth.synthesize(job["text"], job["voice"], seed=job["seed"], steps=s["steps"],
                                               cfg_alpha=s["cfg"], max_frames=s["max_frames"],
                                               normalize=s["normalize"], lang=job["lang"])
        except VoxtralEdgeError as e:
            return {"id": job["id"], "error": str(e)}
        self.rendered += 1
        return {"id": job["id"], "data": encode(result, s),
                "duration": round(result.duration, 6), "frames": int(len(result.codes)),
                "finished": bool(result.finished), "spoken_text": result.spoken_text}

    def info(self) -> dict:
        """Where this worker runs and what it holds in memory."""
        return {"node": socket.gethostname(), "pid": os.getpid(), "rss": rss_bytes()}


def encode(result, settings: dict) -> bytes:
    """A clip's file: the utterance through the audio chain (rate, speed, loudness of the whole clip) into
    WAV, raw 16-bit PCM, FLAC, Ogg Opus or MP3."""
    from ..speech import encode_whole

    output = Output(settings["sample_rate"], settings.get("speed", 1.0), settings.get("loudness"), settings["format"])
    return encode_whole(result, output)[0]


# -- memory ----------------------------------------------------------------------------------------------
def worker_memory_estimate(manifest: Manifest, max_context: int | None = None) -> int:
    """Bytes one worker is expected to hold: its graphs' weights (onnxruntime copies and prepacks them:
    about 1.25x the files), the KV cache, and the interpreter with its libraries. The embedding tables
    are memory-mapped and shared between workers, so they are not counted."""
    files = manifest["files"]
    graph_bytes = sum(files[g["file"]]["size"] + (files[g["data"]]["size"] if g.get("data") else 0)
                      for g in manifest["graphs"].values())
    b = manifest["model"]["backbone"]
    positions = max_context or b["max_context"]
    kv_bytes = 2 * b["n_layers"] * b["n_kv_heads"] * positions * b["head_dim"] * 4
    return int(1.25 * graph_bytes + kv_bytes + 200e6)


MAX_ATTEMPTS = 3  # an item whose worker died this many times is reported as failed (it may be the cause)


def requeue_or_fail(job: dict, attempts: dict, pending, worker: str) -> dict | None:
    """Count one death of the `worker` (e.g. "Ray actor") that held `job`: put the job back at the head of
    `pending`, or, once it has cost MAX_ATTEMPTS workers, return its failure outcome instead."""
    attempts[job["id"]] = attempts.get(job["id"], 0) + 1
    if attempts[job["id"]] < MAX_ATTEMPTS:
        pending.appendleft(job)
        return None
    return {"id": job["id"], "error": f"its {worker} died {MAX_ATTEMPTS} times while rendering it (out of memory?)"}
