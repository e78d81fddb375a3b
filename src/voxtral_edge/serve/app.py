"""The HTTP API: OpenAI's speech endpoint as vLLM-Omni serves it, the voice and model lists, prefetch,
health, and the page at `/`. An app is a function of requests; the `Service` it is made from holds the
bundle, the scheduler and the cache, opened in the background so that /health can say "loading".

Errors have OpenAI's shape, {"error": {"message", "type", "param", "code"}}, with OpenAI's string codes.
What the service cannot do now is a 503 that says why (loading, the bundle changed on disk, memory low,
shutting down) or a 429 (a class's queue is full), a request that cannot start speaking before its
deadline a 504; the process itself stays up.
A streamed WAV has an unknown length: its RIFF and data sizes are 0xFFFFFFFF, as OpenAI's streamed WAV
(read it to the end of the stream; `pcm` is the same samples without the 44-byte header). flac, opus and
mp3 go through the audio chain's encoders, streamed too (see `voxtral_edge.chain.encode`); `sample_rate`,
`speed` and `loudness` are the chain's. Where each <mark> and sentence start is heard (SSML input) is at
GET /v1/audio/marks/{id}, the address the response's X-Marks header gives.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import math
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from .. import __version__
from ..chain import FORMATS, Output, check_speed
from ..chain.loudness import check_target
from ..chain.resample import check_rate
from ..defaults import CFG_ALPHA, CHUNK_FRAMES, FIRST_CHUNK_FRAMES, MAX_CFG, MAX_FRAMES, MAX_STEPS
from ..errors import UsageError, VoxtralEdgeError
from ..manifest import MANIFEST
from ..runtime import Synthesizer
from ..speech import Timeline, chain_for
from .cache import PhraseCache, cache_key
from .guards import BundleWatch, MemoryGuard
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .metrics import Metrics
from .scheduler import (AGING_FRAMES, DEFAULT_PRIORITY, PRIORITIES, DeadlineMissed, Job, Listener, QueueFull,
                        Recording, Scheduler, ShuttingDown)

log = logging.getLogger("voxtral_edge.serve")

MAX_INPUT_CHARS = 4096  # as OpenAI's speech endpoint
MARKS_KEPT = 256  # the last requests whose marks can be read
MAX_HEADER_BYTES = 16 << 10  # a request's headers, together
FIELDS = ("model", "input", "voice", "response_format", "speed", "sample_rate", "loudness", "stream_format",
          "instructions", "seed", "steps", "cfg", "priority", "max_frames", "deadline_ms")
DEADLINES_MS = {"navigation": 5000}  # a request of these classes without deadline_ms gets this one
MAX_DEADLINE_MS = 3_600_000
# Synthesizer.open's options where the service's differ from the runtime's, unless synth_options names them:
# no onnxruntime CPU memory arena (a process that runs for months; see TRIM_INTERVAL_S in serve/scheduler.py)
SERVICE_SYNTH_OPTIONS = {"memory_arena": False}


@dataclass
class ServiceConfig:
    """What `voxtral-edge serve` was started with (defaults: a device profile's, else the runtime's)."""

    bundle: Path
    model_name: str | None = None  # the id clients send as "model" (default: the bundle's checkpoint name)
    api_key: str | None = None
    synth_options: dict = field(default_factory=dict)  # Synthesizer.open's: threads, max_context, providers...
    #                                                    (over SERVICE_SYNTH_OPTIONS)
    seed: int = 0  # a request without a seed gets this one: the same prompt sounds the same, and is cached
    steps: int | None = None
    cfg: float = CFG_ALPHA
    cache_dir: Path | None = None
    cache_bytes: int = 256 << 20
    queue_limit: int = 16
    max_body_bytes: int = 64 << 10
    chunk_frames: int = CHUNK_FRAMES
    first_chunk_frames: int = FIRST_CHUNK_FRAMES
    sample_rate: int | None = None  # of requests that give none (default: the model's)
    lexicon: object = None  # a voxtral_edge.text.lexicon.Lexicon applied to every request
    aging: dict[str, int] = field(default_factory=lambda: dict(AGING_FRAMES))  # frames, per class (see scheduler)
    deadlines: dict[str, int] = field(default_factory=lambda: dict(DEADLINES_MS))  # ms, per class
    memory_reserve: int = 256 << 20  # new syntheses wait (503) while less remains under the memory limit


class ApiError(Exception):
    """An error answered in OpenAI's shape."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error", headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type
        self.headers = headers

    def response(self) -> JSONResponse:
        return JSONResponse({"error": {"message": self.message, "type": self.type, "param": self.param,
                                       "code": self.code}}, status_code=self.status, headers=self.headers)


class Service:
    """The bundle opened once, its scheduler and phrase cache; `state` is loading, ready or failed."""

    def __init__(self, config: ServiceConfig):
        self.config = config
        self.state, self.error = "loading", None
        self.synth: Synthesizer | None = None
        self.scheduler: Scheduler | None = None
        self.cache: PhraseCache | None = None
        self.created = int(time.time())
        self.marks: dict[str, dict] = {}  # request id -> its marks (the last MARKS_KEPT requests)
        self.on_failure = lambda: None  # called (from the loading thread) when the bundle cannot be opened
        self.metrics = Metrics(self)
        self.memory = MemoryGuard(config.memory_reserve)
        self.watch: BundleWatch | None = None
        # the handlers' blocking calls (cache reads, tokenizing): threads made once, so that a request never
        # needs a new one (under RLIMIT_AS, a thread that cannot get memory ends the process)
        self.executor = ThreadPoolExecutor(2, thread_name_prefix="voxtral-edge-io")
        self._loader: threading.Thread | None = None

    def start_loading(self) -> None:
        self._loader = threading.Thread(target=self.load, name="voxtral-edge-load", daemon=True)
        self._loader.start()

    def load(self) -> None:
        c = self.config
        try:
            synth = Synthesizer.open(c.bundle, **{**SERVICE_SYNTH_OPTIONS, **c.synth_options})
            self.bundle_sha256 = hashlib.sha256((synth.manifest.bundle / MANIFEST).read_bytes()).hexdigest()
            self.model_name = c.model_name or synth.manifest["source"]["checkpoint"]
            self.cache = PhraseCache(c.cache_dir, c.cache_bytes) if c.cache_dir is not None else None
            self.scheduler = Scheduler(synth, queue_limit=c.queue_limit, cache=self.cache, aging=c.aging,
                                       on_end=self.metrics.ended)
            self.watch = BundleWatch(synth.manifest, self.bundle_written)
            ready = threading.Barrier(3)  # both of the executor's threads made now, not under memory pressure
            for _ in range(2):
                self.executor.submit(ready.wait)
            ready.wait()
            self.synth = synth
            self.state = "ready"
            log.info("ready: %s (%s), voices %s", c.bundle, self.model_name, ", ".join(sorted(synth.voices)))
        except Exception as e:  # noqa: BLE001 - reported on /health and in the log
            self.state, self.error = "failed", f"{type(e).__name__}: {e}" if not isinstance(e, VoxtralEdgeError) \
                else str(e)
            log.error("cannot open the bundle: %s", self.error)
            self.on_failure()

    def stop(self, wait: bool = True) -> None:
        """End the streams at the next frame boundary (on SIGTERM) and stop the worker; finished phrases
        still waiting to be written go to the cache."""
        if self.scheduler is not None:
            self.scheduler.stop(timeout=30.0 if wait else 0)
        if wait and self.cache is not None:
            self.cache.flush(timeout=30.0)
        if wait:
            if self.watch is not None:
                self.watch.release()
            self.executor.shutdown(wait=False)

    def bundle_changed(self, reason: str) -> None:
        """A bundle file was replaced, removed or changed under the service: new requests get a 503 from now
        on (those in progress finish: the files they read are still the ones opened)."""
        if self.state != "bundle_changed":
            log.error("the bundle changed while serving: %s; new requests get 503 until the service restarts",
                      reason)
            self.state, self.error = "bundle_changed", reason

    def bundle_written(self, reason: str) -> None:
        """A process opens a bundle file for writing or cuts it short, and waits on its lease: the worker
        stops at the next frame boundary (every stream ends with the audio made so far) so that no mapped
        page is read after the change; then the writer goes on."""
        self.bundle_changed(reason)
        if self.scheduler is not None:
            self.scheduler.stop(timeout=60.0)

    def check(self) -> None:
        """Raise the 503 a request gets when the service cannot take it now."""
        if self.state == "ready" and self.watch is not None:
            changed = self.watch.changed()
            if changed:
                self.bundle_changed(changed)
        if self.state != "ready":
            raise ApiError(503, "the bundle is still loading" if self.state == "loading" else
                           f"the bundle changed on disk while serving ({self.error}); restart the service"
                           if self.state == "bundle_changed" else f"the bundle could not be opened: {self.error}",
                           type="server_error", code=self.state,
                           headers={"Retry-After": "1"} if self.state == "loading" else None)

    def speech_key(self, r: "SpeechRequest") -> str:
        c = self.config
        return cache_key(bundle=self.bundle_sha256, runtime=__version__, text=r.text, voice=r.voice, seed=r.seed,
                         steps=r.steps, cfg=r.cfg, max_frames=r.max_frames, chunk_frames=c.chunk_frames,
                         first_chunk_frames=c.first_chunk_frames,
                         # the NPU computes other samples than the CPU
                         providers=list(c.synth_options.get("providers", ("cpu",))))

    def start(self, r: "SpeechRequest"):
        try:
            return self.synth.start(r.text, r.voice, chunk_frames=self.config.chunk_frames,
                                    first_chunk_frames=self.config.first_chunk_frames, seed=r.seed, steps=r.steps,
                                    cfg_alpha=r.cfg, max_frames=r.max_frames, lexicon=self.config.lexicon)
        except UsageError as e:
            raise ApiError(400, str(e), param="input", code="invalid_value") from None
        except OSError as e:  # a voice file gone since the bundle was opened
            self.check()
            raise ApiError(503, f"the bundle cannot be read ({e})", type="server_error", code="bundle_changed") \
                from None

    def chain(self, r: "SpeechRequest", utterance):
        """The request's audio chain (its voice's loudness is measured first, once, when a target is asked)."""
        try:
            return chain_for(self.synth, utterance, r.output)
        except UsageError as e:
            raise ApiError(400, str(e), param="loudness", code="invalid_value") from None

    def keep_marks(self, key: str, record: dict) -> None:
        self.marks[key] = record
        while len(self.marks) > MARKS_KEPT:
            self.marks.pop(next(iter(self.marks)))

    async def call(self, fn, *args):
        """fn(*args) on the service's own threads."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def synthesis(self, r: "SpeechRequest", key: str | None, listener: Listener | None, utterance=None) -> Job:
        """The job in flight under `key` with `listener` (None: a prefetch's keep) added, else a new one of
        `utterance` (started here when None; closed unused when a job is joined); 429 when its class is full,
        503 when memory is low or the service stops, 504 when the listener's deadline is nearer than its first
        audio can be. A key of None shares nothing."""
        try:
            job = self.scheduler.join(key, listener) if key is not None else None
            if job is not None and utterance is not None:
                self.synth.close(utterance)
            if job is None:
                low = self.memory.check()
                if low:
                    if utterance is not None:
                        self.synth.close(utterance)
                    raise ApiError(503, low, type="server_error", code="memory_low", headers={"Retry-After": "1"})
                utterance = utterance or await self.call(self.start, r)
                try:
                    job = self.scheduler.submit(Job(utterance, r.priority, [listener] if listener else [],
                                                    keep=listener is None, cache_key=key))
                except BaseException:
                    self.synth.close(utterance)
                    raise
        except QueueFull as e:
            raise ApiError(429, str(e), type="rate_limit_error", code="rate_limit_exceeded",
                           headers={"Retry-After": str(e.retry_after)}) from None
        except ShuttingDown as e:
            raise ApiError(503, str(e), type="server_error", code="shutting_down") from None
        except DeadlineMissed as e:
            raise ApiError(504, str(e), type="server_error", code="deadline_exceeded") from None
        return job


@dataclass
class SpeechRequest:
    text: str
    voice: str
    output: Output  # response_format, sample_rate, speed, loudness
    seed: int
    steps: int | None
    cfg: float
    priority: str
    max_frames: int | None
    deadline_ms: int | None = None


def _integer(body: dict, name: str, low: int, high: int, default):
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError(400, f"{name} must be an integer, found {type(value).__name__}", param=name, code="invalid_type")
    if not low <= value <= high:
        raise ApiError(400, f"{name} must be from {low} to {high}, found {value}", param=name, code="invalid_value")
    return value


def _number(body: dict, name: str, default):
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ApiError(400, f"{name} must be a number, found {json.dumps(value)}", param=name, code="invalid_type")
    return float(value)


def _string(body: dict, name: str, default=None, required: bool = False):
    value = body.get(name)
    if value is None:
        if required:
            raise ApiError(400, f"{name} is required", param=name, code="missing_required_parameter")
        return default
    if not isinstance(value, str):
        raise ApiError(400, f"{name} must be a string, found {type(value).__name__}", param=name, code="invalid_type")
    return value


def parse_speech(body, service: Service, priority: str | None = None) -> SpeechRequest:
    """Check a speech request's body: every field's presence, type and range, before any work."""
    if not isinstance(body, dict):
        raise ApiError(400, f"the body must be a JSON object, found {type(body).__name__}", code="invalid_json")
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        raise ApiError(400, f"unrecognized request argument: {unknown[0]} (accepted: {', '.join(FIELDS)})",
                       param=unknown[0], code="unknown_parameter")
    model = _string(body, "model")
    if model is not None and model != service.model_name:
        raise ApiError(404, f"The model `{model}` does not exist: this server serves `{service.model_name}`",
                       param="model", code="model_not_found")
    text = _string(body, "input", required=True)
    if not text.strip():
        raise ApiError(400, "input is empty: give the text to speak", param="input", code="invalid_value")
    if len(text) > MAX_INPUT_CHARS:
        raise ApiError(400, f"input is {len(text)} characters long; at most {MAX_INPUT_CHARS} are accepted",
                       param="input", code="string_above_max_length")
    voice = _string(body, "voice", required=True)
    voices = sorted(service.synth.voices)
    if voice not in voices:
        raise ApiError(400, f"unknown voice {voice!r}; this server has: {', '.join(voices)}", param="voice",
                       code="invalid_value")
    fmt = _string(body, "response_format", "wav")
    if fmt not in FORMATS:
        raise ApiError(400, f"response_format {fmt!r} is not supported: use {', '.join(FORMATS)}",
                       param="response_format", code="invalid_value")
    values = {"sample_rate": _integer(body, "sample_rate", 1, 10**6, service.config.sample_rate or
                                      service.synth.sample_rate),
              "speed": _number(body, "speed", 1.0), "loudness": _number(body, "loudness", None)}
    for name, check in (("sample_rate", check_rate), ("speed", check_speed), ("loudness", check_target)):
        try:
            if values[name] is not None:
                check(values[name])
        except UsageError as e:
            raise ApiError(400, str(e), param=name, code="invalid_value") from None
    try:
        output = Output(values["sample_rate"], values["speed"], values["loudness"], fmt)
    except UsageError as e:  # a format the rate does not allow
        raise ApiError(400, str(e), param="response_format", code="invalid_value") from None
    if _string(body, "stream_format", "audio") != "audio":
        raise ApiError(400, "stream_format must be 'audio' (raw audio bytes); 'sse' is not supported",
                       param="stream_format", code="invalid_value")
    if _string(body, "instructions"):
        raise ApiError(400, "instructions are not supported: this model takes a preset voice", param="instructions",
                       code="invalid_value")
    cfg = _number(body, "cfg", service.config.cfg)
    if not 0 <= cfg <= MAX_CFG:
        raise ApiError(400, f"cfg must be from 0 to {MAX_CFG:g}, found {cfg:g}", param="cfg", code="invalid_value")
    chosen = _string(body, "priority", priority or DEFAULT_PRIORITY)
    if chosen not in PRIORITIES:
        raise ApiError(400, f"priority must be one of {', '.join(PRIORITIES)}, found {chosen!r}", param="priority",
                       code="invalid_value")
    priority = priority or chosen
    return SpeechRequest(text, voice, output, _integer(body, "seed", 0, 2**63 - 1, service.config.seed),
                         _integer(body, "steps", 1, MAX_STEPS, service.config.steps), cfg,
                         priority, _integer(body, "max_frames", 1, MAX_FRAMES * 64, None),
                         _integer(body, "deadline_ms", 1, MAX_DEADLINE_MS, service.config.deadlines.get(priority)))


# -- handlers ----------------------------------------------------------------------------------------
def _service(request: Request, ready: bool = True) -> Service:
    service: Service = request.app.state.service
    key = service.config.api_key
    if key is not None:
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {key}".encode()):
            raise ApiError(401, "a valid API key is required: send 'Authorization: Bearer KEY'",
                           code="invalid_api_key")
    if ready:
        service.check()
    return service


async def _json_body(request: Request, limit: int):
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"the body is {declared} bytes; at most {limit} are accepted", code="request_too_large")
    body = bytearray()
    async for part in request.stream():
        body += part
        if len(body) > limit:
            raise ApiError(413, f"the body exceeds {limit} bytes", code="request_too_large")
    try:
        return json.loads(body, parse_constant=_not_json)
    except ValueError as e:
        raise ApiError(400, f"the body is not valid JSON ({e})", code="invalid_json") from None


def _not_json(name: str):
    raise ValueError(f"{name} is not a JSON number")


async def health(request: Request) -> Response:
    service: Service = request.app.state.service
    try:
        service.check()
    except ApiError:
        return JSONResponse({"status": service.state, **({"error": service.error} if service.error else {})},
                            status_code=503)
    room = service.memory.headroom()
    return JSONResponse({"status": "ok", "model": service.model_name, "scheduler": service.scheduler.snapshot(),
                         "cache": service.cache.snapshot() if service.cache else None,
                         "memory": {"headroom_mb": room[0] >> 20, "limit": room[1],
                                    "reserve_mb": service.memory.reserve >> 20} if room else None,
                         "bundle_leases": service.watch.lease_error or "held" if service.watch else None})


async def metrics(request: Request) -> Response:
    service = _service(request, ready=False)
    return Response(service.metrics.text(), media_type=METRICS_CONTENT_TYPE)


async def models(request: Request) -> Response:
    service = _service(request)
    return JSONResponse({"object": "list", "data": [{
        "id": service.model_name, "object": "model", "created": service.created, "owned_by": "voxtral-edge",
        "root": service.model_name, "parent": None, "max_model_len": service.synth.max_context, "permission": []}]})


async def voices(request: Request) -> Response:
    service = _service(request)
    return JSONResponse({"voices": sorted(service.synth.voices), "uploaded_voices": []})


class Reader:
    """A listener's side, in the event loop: each chunk of its job's recording once, in order, as the worker
    appends them (nothing is queued per listener: a slow client only reads later)."""

    def __init__(self, service: Service, job: Job, listener: Listener):
        self.service, self.job, self.listener = service, job, listener
        self.recording: Recording = listener.recording
        self.position = 0
        self.changed = asyncio.Event()
        loop = asyncio.get_running_loop()

        def wake():
            try:
                loop.call_soon_threadsafe(self.changed.set)
            except RuntimeError:  # the event loop has closed (the server stopped)
                pass

        self._wake = listener.wake = wake
        self.recording.wakers.add(wake)

    def ready(self) -> bool:
        """A chunk is there to read, or there will be none."""
        r = self.recording
        return self.position < len(r.chunks) or r.end is not None or self.listener.error is not None

    async def first(self, request: Request, deadline: float | None) -> str:
        """Wait for the first chunk (or the end): "ready", or "gone" if the client left first, or "late" when
        the deadline (a monotonic time) passed first."""
        async def disconnected():
            while (await request.receive())["type"] != "http.disconnect":
                pass

        gone = asyncio.ensure_future(disconnected())
        try:
            while not self.ready():
                changed = asyncio.ensure_future(self.changed.wait())
                timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
                done, _ = await asyncio.wait({changed, gone}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                changed.cancel()
                self.changed.clear()
                if gone in done:
                    return "gone"
                if not done:
                    return "late"
        finally:
            gone.cancel()
        return "ready"

    async def next(self) -> bytes | None:
        """The next chunk, or None at the end."""
        while not self.ready():
            await self.changed.wait()
            self.changed.clear()
        if self.position < len(self.recording.chunks):
            self.position += 1
            return self.recording.chunks[self.position - 1]
        if self.recording.end == "failed":
            log.error("job %d failed after its first audio: %s", self.job.id, self.recording.error)
        return None

    def close(self, late: bool = False) -> None:
        """The client has gone, has read everything or (`late`) its deadline passed: it costs no compute any
        more."""
        self.recording.wakers.discard(self._wake)
        self.service.scheduler.leave(self.job, self.listener, late)

    def error(self) -> ApiError | None:
        """What to answer instead of audio when nothing was read and nothing will come."""
        if self.position < len(self.recording.chunks):
            return None
        if isinstance(self.listener.error, DeadlineMissed):
            return ApiError(504, str(self.listener.error), type="server_error", code="deadline_exceeded")
        end, error = self.recording.end, self.recording.error
        if end == "failed":
            if isinstance(error, MemoryError) or "allocat" in str(error).lower():
                return ApiError(503, f"out of memory while synthesizing ({error or 'MemoryError'})",
                                type="server_error", code="memory_low", headers={"Retry-After": "1"})
            return ApiError(500, f"synthesis failed: {error}", type="server_error", code="synthesis_failed")
        if end == "shutdown":
            if self.service.state == "bundle_changed":
                return ApiError(503, f"the bundle changed on disk while serving ({self.service.error}); restart "
                                     f"the service", type="server_error", code="bundle_changed")
            return ApiError(503, "the service is shutting down", type="server_error", code="shutting_down")
        return None


async def speech(request: Request) -> Response:
    """POST /v1/audio/speech: from the cache at once, else from the synthesis in flight under the same key,
    else queued at its priority; the response (status and headers) starts with the first audio, so that an
    error before it is still answered as an error."""
    arrived, priority = time.monotonic(), None
    try:
        service = _service(request)
        r = parse_speech(await _json_body(request, service.config.max_body_bytes), service)
        priority = r.priority
        response = await _speak(request, service, r, arrived)
    except ApiError as e:
        request.app.state.service.metrics.request(priority, e.status)
        raise
    service.metrics.request(priority, response.status_code)
    return response


async def _speak(request: Request, service: Service, r: SpeechRequest, arrived: float) -> Response:
    utterance = await service.call(service.start, r)
    chain = await service.call(service.chain, r, utterance)
    marks_id = secrets.token_hex(8)
    marks = {"id": marks_id, "sample_rate": r.output.sample_rate, "done": False, "marks": []}
    service.keep_marks(marks_id, marks)
    headers = {"X-Sample-Rate": str(r.output.sample_rate), "X-Priority": r.priority,
               "X-Marks": f"/v1/audio/marks/{marks_id}"}
    media = r.output.media_type

    def out(timeline: Timeline, pcm: bytes) -> bytes:
        audio = np.frombuffer(pcm, "<i2").astype(np.float32) / 32767  # the int16 samples exactly, as floats
        timeline.before(len(audio))
        data = chain.feed(audio)
        marks["marks"] = [t.as_dict() for t in timeline.timings]
        return data

    def tail(timeline: Timeline) -> bytes:
        timeline.end()
        data = chain.finish()
        marks["marks"], marks["done"] = [t.as_dict() for t in timeline.timings], True
        return data

    key = service.speech_key(r)
    markup = any(e.kind != "sentence" for e in utterance.pieces if hasattr(e, "kind")) or \
        sum(isinstance(p, str) for p in utterance.pieces) > 1  # marks, breaks, rates, several sentences
    cached = await service.call(service.cache.get, key) if service.cache is not None and not markup else None
    if cached is not None:
        service.synth.close(utterance)
        service.metrics.first_audio.labels(r.priority).observe(time.monotonic() - arrived)
        timeline = Timeline(utterance, chain)

        async def from_cache():
            yield await service.call(lambda: out(timeline, cached) + tail(timeline))
        return StreamingResponse(from_cache(), media_type=media, headers={**headers, "X-Cache": "hit"})

    deadline = arrived + r.deadline_ms / 1e3 if r.deadline_ms else None
    listener = Listener(r.priority, deadline)
    job = await service.synthesis(r, None if markup else key, listener, utterance)
    timeline = Timeline(listener.utterance, chain)  # (a shared synthesis's: its events are reached there)
    reader = Reader(service, job, listener)
    try:
        outcome = await reader.first(request, deadline)
    except BaseException:
        reader.close()
        raise
    if outcome == "gone":  # the client left while its request waited
        reader.close()
        return Response(status_code=499)
    if outcome == "late":
        listener.error = DeadlineMissed(f"the {r.priority} request could not start speaking within its deadline "
                                        f"of {r.deadline_ms} ms")
        reader.close(late=True)
    error = reader.error()
    if error is not None:
        reader.close()
        raise error
    service.metrics.first_audio.labels(r.priority).observe(time.monotonic() - arrived)

    async def audio():
        try:
            while (chunk := await reader.next()) is not None:
                data = out(timeline, chunk)
                if data:
                    yield data
            yield tail(timeline)
        finally:  # the client left (starlette cancels this) or the job ended: either way it costs nothing more
            reader.close()

    return StreamingResponse(audio(), media_type=media,
                             headers={**headers, "X-Cache": "shared" if listener.shared else "miss"})


async def speech_marks(request: Request) -> Response:
    """GET /v1/audio/marks/{id}: where each <mark> and sentence start of a request is heard, at its output's
    rate and speed: {"id", "sample_rate", "done", "marks": [{"name", "kind", "sample", "time_s"}]}, filled as
    the audio is made (`done` once it is all out)."""
    service = _service(request)
    marks = service.marks.get(request.path_params["id"])
    if marks is None:
        raise ApiError(404, f"no marks for {request.path_params['id']!r}: ids come from a speech response's X-Marks "
                            f"header, and the last {MARKS_KEPT} are kept", code="not_found")
    return JSONResponse(marks)


async def prefetch(request: Request) -> Response:
    """Render a prompt into the cache at background priority; 200 if it is there already, else 202 (a
    synthesis of it already in flight is kept going for the cache)."""
    priority = "background"
    try:
        service = _service(request)
        r = parse_speech(await _json_body(request, service.config.max_body_bytes), service, priority="background")
        if service.cache is None:
            raise ApiError(400, "this server runs without a phrase cache (--no-cache): nothing to prefetch into",
                           code="cache_disabled")
        key = service.speech_key(r)
        if await service.call(service.cache.get, key) is not None:
            response = JSONResponse({"status": "cached", "key": key})
        else:
            await service.synthesis(r, key, None)
            response = JSONResponse({"status": "queued", "key": key}, status_code=202)
    except ApiError as e:
        request.app.state.service.metrics.request(priority, e.status)
        raise
    service.metrics.request(priority, response.status_code)
    return response


async def page(request: Request) -> Response:
    return HTMLResponse(resources.files(__package__).joinpath("page.html").read_text(encoding="utf-8"))


async def _api_error(request: Request, exc: ApiError) -> Response:
    return exc.response()


async def _http_error(request: Request, exc: HTTPException) -> Response:
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
    return ApiError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}", code=code).response()


class HeaderLimit:
    """431 for a request whose headers exceed MAX_HEADER_BYTES together (h11's own limit only holds for
    headers that arrive in pieces)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and sum(len(k) + len(v) for k, v in scope["headers"]) > MAX_HEADER_BYTES:
            response = ApiError(431, f"the request's headers exceed {MAX_HEADER_BYTES} bytes",
                                code="request_header_fields_too_large").response()
            return await response(scope, receive, send)
        return await self.app(scope, receive, send)


def create_app(service: Service) -> Starlette:
    """The ASGI app over a Service; the bundle starts loading when the app starts."""
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app):
        service.start_loading()
        yield
        await asyncio.get_running_loop().run_in_executor(None, service.stop)

    app = Starlette(routes=[
        Route("/", page), Route("/health", health), Route("/v1/models", models),
        Route("/v1/audio/voices", voices), Route("/v1/audio/speech", speech, methods=["POST"]),
        Route("/v1/audio/prefetch", prefetch, methods=["POST"]), Route("/v1/audio/marks/{id}", speech_marks),
        Route("/metrics", metrics),
    ], exception_handlers={ApiError: _api_error, HTTPException: _http_error}, lifespan=lifespan,
        middleware=[Middleware(HeaderLimit)])
    app.state.service = service
    return app
