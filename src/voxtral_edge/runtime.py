"""The runtime: a bundle folder -> speech, with onnxruntime, numpy and tokenizers only.

    prompt ids -> embeddings (text rows gathered from a memory-mapped table, voice rows over [AUDIO])
    backbone prefill (KV cache: one preallocated buffer per layer, bound as both past and present,
                      so GroupQueryAttention writes each new position in place)
    per frame:  semantic code = argmax(semantic_logits); END_AUDIO ends the utterance
                acoustic codes = one flow_head call: every Euler step, conditional and unconditional rows in
                                 one batch, guidance and rounding inside the graph
                next input = sum of one audio-embedding row per codebook -> one backbone step
    codes -> codec decoder -> 24 kHz float32 audio

A Synthesizer holds one KV cache, so it serves one request at a time; calls from several threads are
serialized by a lock. An utterance can also be made step by step (`start`, then `step` per frame): its
state is an `Utterance` object, and several may take turns frame by frame, each one's KV rows set aside
while another's are in the cache, so that a scheduler can pause one utterance for another and resume it.
"""

from __future__ import annotations

import math
import secrets
import unicodedata
import threading
import time
import warnings
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from . import defaults
from .errors import UsageError, VoxtralEdgeError
from .htp import HtpBackbone, HtpCodec, HtpFlow, is_htp
from .machine import trim_heap, zeroed_buffer
from .manifest import Manifest
from .prompt import SpeechSpecialIds, speech_prompt, voice_positions
from .sessions import SessionSettings, kernel_fallback, open_sessions
from .text import LANGUAGES, split_text, voice_language
from .text import normalize as normalize_text
from .text import ssml as ssml_module

DECODE_CHUNK = 64  # frames per codec call in a whole-utterance decode
FRAMES_PER_TEXT_TOKEN = 5  # context kept for audio per text token when a long text is split
# A piece that has not ended after this many frames (+ per text token) is runaway generation.
RUNAWAY_FRAMES, RUNAWAY_FRAMES_PER_TOKEN = 40, 20
PREFIX_CACHE_VOICES = 4  # voice prefixes whose keys and values are kept
f32 = np.float32


@dataclass
class Result:
    """One utterance: float32 audio, its codes [frames, n_codebooks] (without the 2 specials), timings in ms."""

    audio: np.ndarray
    codes: np.ndarray
    sample_rate: int
    seed: int | None
    prompt_tokens: int
    finished: bool  # True when the model ended the utterance (END_AUDIO), False when max_frames did
    timings: dict[str, float] = field(default_factory=dict)
    spoken_text: str = ""  # the text the prompts were made of: the normalized text, or the raw one
    events: list["Event"] = field(default_factory=list)  # marks, sentence starts, rate changes reached

    @property
    def duration(self) -> float:
        return len(self.audio) / self.sample_rate


@dataclass(frozen=True)
class Event:
    """A point of an utterance: a `<mark>` ("mark", its name), a sentence start ("sentence", its text) or a
    change of rate ("rate"), at `sample` of the model's audio: always between two pieces, on a frame
    boundary, so that it is exactly where the audio returned before it ends."""

    kind: str
    name: str | None = None
    rate: float = 1.0
    sample: int = -1


@dataclass(frozen=True)
class Silence:
    """A break: exactly this many samples of silence between two pieces."""

    samples: int


class EmbeddingTable:
    """A memory-mapped [rows, dim] table; only the rows asked for are read."""

    def __init__(self, path: Path, dtype: str):
        self.table = np.load(path, mmap_mode="r", allow_pickle=False)
        self.dtype = dtype

    def rows(self, ids: np.ndarray) -> np.ndarray:
        rows = np.asarray(self.table[np.asarray(ids)])
        if self.dtype == "bfloat16":  # stored as the 16 high bits of float32: widening is exact
            return (rows.astype(np.uint32) << 16).view(f32)
        return rows.astype(f32)


class Synthesizer:
    """Speech from a bundle. `Synthesizer.open(path)` verifies the bundle and loads its graphs."""

    def __init__(self, manifest: Manifest, threads: int | None = None, max_context: int | None = None, *,
                 saved_graphs: bool | None = None, codec_threads: int | None = None, codec_pipeline: bool = False,
                 providers: tuple[str, ...] = ("cpu",), profiling: str | None = None, allow_fallback: bool = False,
                 soc: str | None = None, record: dict | None = None, release_mapped: bool = True,
                 parallel_open: bool = False):
        self.manifest = m = manifest
        self.audio_layout = m["audio"]
        self.sample_rate = int(self.audio_layout["sample_rate"])
        backbone = m["model"]["backbone"]
        self.max_context = int(backbone["max_context"]) if max_context is None else int(max_context)
        if not 1 <= self.max_context <= backbone["max_context"]:
            raise VoxtralEdgeError(f"max_context {max_context}: the bundle supports 1..{backbone['max_context']} "
                                   f"positions (re-export with a larger --max-context for more)")
        # the codec may have its own thread budget: on its own thread (codec_pipeline) it runs beside the others
        self.codec_pipeline = bool(codec_pipeline)
        self._pool: ThreadPoolExecutor | None = None
        settings = SessionSettings(threads=threads, codec_threads=codec_threads, providers=tuple(providers),
                                   saved_graphs=saved_graphs, profiling=profiling, release_mapped=release_mapped,
                                   parallel_open=parallel_open, allow_fallback=allow_fallback, soc=soc,
                                   record=record)
        tokenizer_file = str(m.path(m["tokenizer"]["file"]))
        if parallel_open:
            with ThreadPoolExecutor(1) as pool:
                tokenizer = pool.submit(Tokenizer.from_file, tokenizer_file)
                self.sessions: dict[str, ort.InferenceSession] = open_sessions(m, settings)
                self.tokenizer = tokenizer.result()
        else:  # the tokenizer first: its parse temporaries come and go while the process is still small
            self.tokenizer = Tokenizer.from_file(tokenizer_file)
            trim_heap()
            self.sessions = open_sessions(m, settings)
        self.ids = SpeechSpecialIds.from_dict(m["special_ids"])
        self.text_embeddings = EmbeddingTable(m.path(m["embeddings"]["text"]["file"]), m["embeddings"]["text"]["dtype"])
        self.audio_embeddings = EmbeddingTable(m.path(m["embeddings"]["audio"]["file"]),
                                               m["embeddings"]["audio"]["dtype"])
        self._codebook_offsets = np.array(self.audio_layout["codebook_offsets"]) + self.audio_layout["n_specials"]
        self.samples_per_frame = int(self.audio_layout["samples_per_frame"])
        self._voices: dict[str, np.ndarray] = {}
        self._kv: list[ort.OrtValue] | None = None
        self._kv_arrays: list[np.ndarray] = []
        # graphs exported in the NPU form are called through their own conventions (voxtral_edge.htp)
        self._htp_backbone = HtpBackbone(self.sessions["backbone_step"], m, self.max_context) \
            if is_htp(m, "backbone_step") else None
        self._htp_flow = HtpFlow(self.sessions["flow_head"], m) if is_htp(m, "flow_head") else None
        self._prefix_cache: dict[str, list[np.ndarray]] = {}
        self._holder: Utterance | None = None  # the utterance whose rows the KV cache holds
        self.last_result: Result | None = None
        self._lock = threading.Lock()

    @classmethod
    def open(cls, bundle: str | Path, *, threads: int | None = None, max_context: int | None = None,
             verify: bool = True, saved_graphs: bool | None = None, codec_threads: int | None = None,
             codec_pipeline: bool = False, providers: tuple[str, ...] = ("cpu",),
             profiling: str | None = None, allow_fallback: bool = False, soc: str | None = None,
             record: dict | None = None, release_mapped: bool = True, parallel_open: bool = False) -> "Synthesizer":
        """Check the bundle against its manifest (sizes always; sha256 of every file not vouched for by this
        user's verified stamp unless verify=False: see `voxtral_edge.manifest`), then build one onnxruntime
        session per graph (`voxtral_edge.sessions`): from this machine's saved optimized graphs when
        `voxtral-edge optimize` made them (saved_graphs None), making them (True) or never (False).
        `threads` is the backbone's and flow head's intra-op thread budget, `codec_threads` the codec's
        (default: the same); `providers` the execution providers by short name (`qnn`, `qnn:flow,codec`:
        Qualcomm's NPU, see `voxtral_edge.sessions`; `allow_fallback` lets nodes it cannot run go to the CPU;
        `soc` names the SoC, whose compiled graphs only are accepted); `profiling` a path prefix for
        onnxruntime's per-node profiles; `record` collects the inputs of every call of a graph in the NPU
        form (calibration). `release_mapped` gives back the data-file pages onnxruntime keeps mapped once a
        session is made; `parallel_open` loads the tokenizer and makes the codec's session on a second
        thread (shorter open, higher peak memory; see `voxtral_edge.sessions`). With `codec_pipeline`,
        `stream` decodes audio on a second thread while the next frames are computed (same audio)."""
        return cls(Manifest.load(bundle, verify=verify), threads=threads, max_context=max_context,
                   saved_graphs=saved_graphs, codec_threads=codec_threads, codec_pipeline=codec_pipeline,
                   providers=providers, profiling=profiling, allow_fallback=allow_fallback, soc=soc, record=record,
                   release_mapped=release_mapped, parallel_open=parallel_open)

    @property
    def kernel_fallbacks(self) -> dict[str, dict[str, str]]:
        """The graphs opened with a kernel fallback because a quantized kernel gave wrong answers on this CPU
        (`voxtral_edge.kernelcheck`), each with the session config entries it was opened with."""
        return {name: config for name, session in self.sessions.items() if (config := kernel_fallback(session))}

    # -- inputs ----------------------------------------------------------------------------------
    @property
    def voices(self) -> dict[str, int]:
        """Preset voice names and their [AUDIO] token counts."""
        return {name: v["tokens"] for name, v in self.manifest["voices"].items()}

    def voice(self, name: str) -> np.ndarray:
        if name not in self.manifest["voices"]:
            raise UsageError(f"unknown voice {name!r}; this bundle has: {', '.join(sorted(self.voices))}")
        if name not in self._voices:
            self._voices[name] = np.load(self.manifest.path(self.manifest["voices"][name]["file"]),
                                         allow_pickle=False).astype(f32)
        return self._voices[name]

    def prompt(self, text: str, voice: str) -> list[int]:
        """The speech prompt's token ids (as mistral-common's encode_speech_request builds them)."""
        self.voice(voice)
        text_ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        return speech_prompt(text_ids, self.voices[voice], self.ids)

    def prompt_embeddings(self, prompt: list[int], voice: str) -> np.ndarray:
        x = self.text_embeddings.rows(np.array(prompt))
        x[voice_positions(prompt, self.ids)] = self.voice(voice)
        return x

    # -- the graphs, one call at a time (what the frame loop is made of) -----------------------------
    @property
    def kv_cache(self) -> list[np.ndarray]:
        """The KV cache: one preallocated array [1, kv_heads, max_context, head_dim] per layer and kind
        (layer 0's keys, its values, layer 1's keys, ...), bound in place as both past and present of
        the backbone, so that writing an array writes the cache (allocated on first use). float32; in a
        bundle in the NPU form, uint16 when it quantized the cache, and [.., the compiled positions, ..]."""
        if self._htp_backbone is not None:
            return self._htp_backbone.arrays
        self._kv_cache()
        return self._kv_arrays

    @property
    def cached_voices(self) -> tuple[str, ...]:
        """The voices whose prompt prefix (keys and values) is kept, least recently used first."""
        return tuple(self._prefix_cache)

    def _kv_cache(self) -> list[ort.OrtValue]:
        """The KV buffers, allocated once, bound as both past and present of every layer."""
        if self._kv is None:
            b = self.manifest["model"]["backbone"]
            shape = (1, b["n_kv_heads"], self.max_context, b["head_dim"])
            # each OrtValue wraps its numpy array's memory: writing the array writes the cache; on small
            # pages, only the positions written are resident
            self._kv_arrays = [zeroed_buffer(shape, f32) for _ in range(2 * b["n_layers"])]
            self._kv = [ort.OrtValue.ortvalue_from_numpy(a) for a in self._kv_arrays]
            self._io = self.sessions["backbone_step"].io_binding()
            for i in range(b["n_layers"]):
                for j, kind in enumerate(("key", "value")):
                    self._io.bind_ortvalue_input(f"past_{kind}_{i}", self._kv[2 * i + j])
                    self._io.bind_ortvalue_output(f"present_{kind}_{i}", self._kv[2 * i + j])
        return self._kv

    def backbone(self, x: np.ndarray, past_length: int) -> tuple[np.ndarray, np.ndarray]:
        """Run x [T, dim] at positions past_length.. ; returns (hidden states [T, dim], semantic logits of
        the last position). The cache keeps everything before past_length and receives these positions (an
        utterance in progress must be `suspend`ed first, or its rows are overwritten)."""
        if past_length + len(x) > self.max_context:
            raise VoxtralEdgeError(f"context full: {past_length + len(x)} positions needed, max_context is "
                                   f"{self.max_context}")
        if self._htp_backbone is not None:
            return self._htp_backbone.run(x, past_length)
        self._kv_cache()
        x = np.ascontiguousarray(x[None], dtype=f32)
        position = np.array([past_length], dtype=np.int64)
        self._io.bind_cpu_input("inputs_embeds", x)
        self._io.bind_cpu_input("past_length", position)
        # rebound every run: their shape follows T (an output bound once keeps its first shape)
        self._io.bind_output("hidden_states")
        self._io.bind_output("semantic_logits")
        self.sessions["backbone_step"].run_with_iobinding(self._io)
        outputs = self._io.get_outputs()  # the KV buffers first, then the two bound last
        return outputs[-2].numpy()[0], outputs[-1].numpy()[0]

    def prefill(self, prompt: list[int], voice: str) -> tuple[np.ndarray, np.ndarray]:
        """Run a speech prompt (`prompt(text, voice)`) into the cache from position 0; returns (hidden states
        of the positions after the voice's prefix, semantic logits of the last position). The voice's prefix
        ([BOS] [BEGIN_AUDIO] [AUDIO] x N [NEXT_AUDIO_TEXT]) does not depend on the text: its keys and values
        are computed once per voice and copied in."""
        return self._prefill(prompt, self.prompt_embeddings(prompt, voice), voice)

    def backbone_step(self, codes: np.ndarray, position: int) -> tuple[np.ndarray, np.ndarray]:
        """One frame's codes (without specials) into the backbone at `position`: (hidden state [dim],
        semantic logits of the next frame)."""
        hidden, logits = self.backbone(self.audio_embedding(codes)[None], position)
        return hidden[-1], logits

    def acoustic_codes(self, h: np.ndarray, noise: np.ndarray, steps: int, cfg_alpha: float) -> np.ndarray:
        """Euler integration of the flow head from noise (t = 0) to t = 1 with classifier-free guidance,
        all steps in one call of the flow_head graph; returns codes 0..levels-1."""
        return self._flow(h, noise, steps, cfg_alpha)[0][0]

    def flow_latent(self, h: np.ndarray, noise: np.ndarray, steps: int, cfg_alpha: float) -> np.ndarray:
        """The same integration's end point, x at t = 1 [n_acoustic], before it is rounded to codes."""
        return self._flow(h, noise, steps, cfg_alpha)[1][0]

    def _flow(self, h: np.ndarray, noise: np.ndarray, steps: int, cfg_alpha: float) -> tuple[np.ndarray, np.ndarray]:
        """(codes [1, n_acoustic], latent [1, n_acoustic]) of one frame."""
        if self._htp_flow is not None:
            return self._htp_flow.run(h, noise, steps, cfg_alpha)
        # with alpha 1 the unconditional row has weight 0: the graph runs the conditional row alone
        weights = np.array([1.0] if cfg_alpha == 1 else [cfg_alpha, 1 - cfg_alpha], dtype=f32)
        codes, latent = self.sessions["flow_head"].run(["codes", "latent"], {
            "noise": np.asarray(noise, dtype=f32).reshape(1, -1), "h": np.asarray(h, dtype=f32).reshape(1, -1),
            "timesteps": np.linspace(0, 1, steps + 1, dtype=f32), "cfg_weights": weights})
        return codes, latent

    def audio_embedding(self, codes: np.ndarray) -> np.ndarray:
        """The next backbone input: the sum of one row per codebook (codes without specials)."""
        return self.audio_embeddings.rows(np.asarray(codes) + self._codebook_offsets).sum(axis=0)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """Codes [frames, n_codebooks] -> float32 audio, whole utterance (decoded in chunks that carry
        state, which gives the same samples and bounds the attention's memory)."""
        codec = self.codec_stream()
        codes = np.asarray(codes, dtype=np.int64)
        parts = [codec.decode(codes[i:i + DECODE_CHUNK]) for i in range(0, len(codes), DECODE_CHUNK)]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=f32)

    def codec_stream(self) -> CodecStream | HtpCodec:
        """A new codec stream (its carried state at the start of an utterance): feed it frames in order."""
        if is_htp(self.manifest, "codec_decoder"):
            return HtpCodec(self.sessions["codec_decoder"], self.manifest)
        return CodecStream(self)

    def teacher_forced(self, text: str, voice: str, codes: np.ndarray, noise: np.ndarray, *,
                       steps: int | None = None, cfg_alpha: float = defaults.CFG_ALPHA) -> np.ndarray:
        """Each frame's codes [frames, n_codebooks] as this bundle predicts them when every earlier frame is
        the given `codes`' (another bundle's, another machine's): one differing code then stays one
        difference instead of changing every frame after it. `text` is spoken as given (pass a Result's
        `spoken_text`), frame f's flow noise is `noise[f]`."""
        steps = self.manifest["model"]["flow_head"]["n_decoding_steps"] if steps is None else steps
        specials, codes = self.audio_layout["n_specials"], np.asarray(codes)
        with self._lock:
            if self._holder is not None:
                self._suspend(self._holder)
            prompt = self.prompt(text, voice)
            hidden, logits = self.prefill(prompt, voice)
            h, out = hidden[-1], []
            for f, frame in enumerate(codes):
                acoustic = self.acoustic_codes(h, noise[f], steps, cfg_alpha)
                out.append(np.concatenate([[int(np.argmax(logits)) - specials], acoustic]))
                if f + 1 < len(codes):
                    h, logits = self.backbone_step(frame, len(prompt) + f)
        return np.array(out, dtype=np.int64).reshape(-1, codes.shape[1])

    # -- the voice prefix --------------------------------------------------------------------------
    def _prefill(self, prompt: list[int], x: np.ndarray, voice: str) -> tuple[np.ndarray, np.ndarray]:
        """`prefill`, with the prompt's embeddings x already made."""
        prefix = voice_positions(prompt, self.ids).stop + 1
        kv = self.kv_cache
        cached = self._prefix_cache.pop(voice, None)
        if cached is None:
            self.backbone(x[:prefix], 0)
            cached = [a[:, :, :prefix].copy() for a in kv]
        else:
            for a, c in zip(kv, cached):
                a[:, :, :prefix] = c
        self._prefix_cache[voice] = cached  # most recent last
        while len(self._prefix_cache) > PREFIX_CACHE_VOICES:
            self._prefix_cache.pop(next(iter(self._prefix_cache)))
        return self.backbone(x[prefix:], prefix)

    # -- one utterance ---------------------------------------------------------------------------
    def pieces(self, text: str, voice: str) -> list[str]:
        """The prompts a text is spoken in: the whole text when it fits the context, else its sentences
        packed greedily into pieces that do (a sentence too long for one is split further)."""
        budget = max(1, (self.max_context - self.voices[voice] - 5) // FRAMES_PER_TEXT_TOKEN)
        count = lambda piece: len(self.tokenizer.encode(piece, add_special_tokens=False).ids)  # noqa: E731
        if count(text) <= budget:
            return [text]
        pieces, cursor = [], 0
        for part in split_text(text, budget, count):
            start = text.index(part, cursor)
            cursor = start + len(part)
            merged = text[pieces[-1][0]:cursor] if pieces else None
            if merged is not None and count(merged) <= budget:
                pieces[-1] = (pieces[-1][0], cursor)  # as a slice of the original: its own spacing kept
            else:
                pieces.append((start, cursor))
        return [text[a:b] for a, b in pieces]

    def script(self, text: str, voice: str, *, normalize: bool = True, lang: str | None = None,
               ssml: bool | None = None, lexicon=None, timings: bool = False) -> list:
        """What an utterance is made of, in order: prompts (str, see `pieces`), `Silence`s and `Event`s.
        `text` is SSML when `ssml` is True, or None and it starts with <speak (see `voxtral_edge.text.ssml`):
        each of its sentences is then a prompt of its own, so that marks and sentence starts fall on frame
        boundaries; plain text is one span (one per sentence with `timings`)."""
        if lang is not None and lang not in LANGUAGES:
            raise UsageError(f"lang {lang!r}: expected one of {', '.join(LANGUAGES)}")
        markup = ssml if ssml is not None else ssml_module.is_ssml(text)
        spans = ssml_module.parse(text, lang) if markup else ssml_module.plain(text, lang, sentences=timings)
        script, rate, spoken = [], 1.0, False
        for span in spans:
            if isinstance(span, ssml_module.Break):
                script.append(Silence(int(round(span.ms * self.sample_rate / 1000))))
            elif isinstance(span, ssml_module.Mark):
                script.append(Event("mark", span.name))
            else:
                words = self.spoken_text(span.text, voice, normalize=normalize, lang=span.lang, lexicon=lexicon,
                                         empty_ok=len(spans) > 1)
                if not words:
                    continue
                if span.sentence:
                    script.append(Event("sentence", span.text.strip()))
                if span.rate != rate:
                    script.append(Event("rate", rate=span.rate))
                    rate = span.rate
                script.extend(self.pieces(words, voice))
                spoken = True
        if not spoken:
            raise UsageError(f"text {text[:40]!r}: nothing is left to speak once normalized")
        return script

    def spoken_text(self, text: str, voice: str, *, normalize: bool = True, lang: str | None = None,
                    lexicon=None, empty_ok: bool = False) -> str:
        """What is spoken for `text`: `voxtral_edge.text.normalize(text, lang)` (lang None: the voice's
        language, see `voice_language`), or `text` itself when normalize is False. A text with nothing
        left to say is a UsageError."""
        if lang is not None and lang not in LANGUAGES:
            raise UsageError(f"lang {lang!r}: expected one of {', '.join(LANGUAGES)}")
        if not normalize:
            return text
        lang = voice_language(voice) if lang is None else lang
        spoken = normalize_text(lexicon.apply(text, lang) if lexicon else text, lang)
        if not any(c.isalnum() for c in spoken):
            if empty_ok:
                return ""
            raise UsageError(f"text {text[:40]!r}: nothing is left to speak once normalized ({lang}); "
                             f"pass normalize=False (--raw) to speak it as written")
        return spoken

    def synthesize(self, text: str, voice: str, *, seed: int | None = None, steps: int | None = None,
                   cfg_alpha: float = defaults.CFG_ALPHA, max_frames: int | None = None,
                   noise: np.ndarray | None = None,
                   normalize: bool = True, lang: str | None = None, ssml: bool | None = None, lexicon=None,
                   timings: bool = False) -> Result:
        """Speak `text` with a preset voice. The text is first normalized for `lang` (None: the voice's
        language; normalize=False speaks it as written); `Result.spoken_text` is what was spoken. Frame
        f's flow-matching noise is row f of `noise` when given, else drawn from `seed` (a random seed when
        None; the one used is in the result). A text longer than the context is spoken piece by piece
        (see `pieces`)."""
        u = self.start(text, voice, chunk_frames=DECODE_CHUNK, first_chunk_frames=DECODE_CHUNK, seed=seed,
                       steps=steps, cfg_alpha=cfg_alpha, max_frames=max_frames, noise=noise,
                       normalize=normalize, lang=lang, ssml=ssml, lexicon=lexicon, timings=timings)
        with self._lock:
            try:
                while not u.done:
                    self._step(u)
            finally:
                result = self._close(u)
        return result

    def stream(self, text: str, voice: str, *, chunk_frames: int = defaults.CHUNK_FRAMES,
               first_chunk_frames: int = defaults.FIRST_CHUNK_FRAMES,
               seed: int | None = None, steps: int | None = None, cfg_alpha: float = defaults.CFG_ALPHA,
               max_frames: int | None = None, noise: np.ndarray | None = None, normalize: bool = True,
               lang: str | None = None, ssml: bool | None = None, lexicon=None,
               timings: bool = False) -> Iterator[np.ndarray]:
        """Speak `text`, yielding float32 audio as it is made: the first chunk after `first_chunk_frames`
        frames (80 ms each; small, so that sound starts early), then every `chunk_frames`; the chunks
        concatenate to what `synthesize` returns (normalize and lang as there). Stop early by closing the
        generator (or leaving the loop); `last_result` then holds the codes, audio, timings and spoken
        text of what was made."""
        u = self.start(text, voice, chunk_frames=chunk_frames, first_chunk_frames=first_chunk_frames, seed=seed,
                       steps=steps, cfg_alpha=cfg_alpha, max_frames=max_frames, noise=noise, normalize=normalize,
                       lang=lang, ssml=ssml, lexicon=lexicon, timings=timings)
        return self.chunks(u)

    def chunks(self, u: Utterance) -> Iterator[np.ndarray]:
        """The audio of an utterance made by `start`, chunk by chunk, as `stream` yields it (the codec on its
        own thread with `codec_pipeline`); `u.events` fills as marks and sentence starts are reached."""
        pool = self._codec_pool()
        with self._lock:
            try:
                while not u.done:
                    chunk = self._step(u, pool)
                    if len(chunk):
                        yield chunk
                    yield from self._decoded(u, wait=u.done)
            finally:  # also when the caller stops early: what was heard is what was made
                for future in u.decoding:  # (a chunk still decoding was not heard)
                    future.cancel() or future.exception()
                u.decoding.clear()
                self.last_result = self._close(u)

    def _codec_pool(self) -> ThreadPoolExecutor | None:
        """The codec's own thread when `codec_pipeline` is on (made once, kept)."""
        if self.codec_pipeline and self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="voxtral-codec")
        return self._pool if self.codec_pipeline else None

    def _decoded(self, u: Utterance, wait: bool) -> Iterator[np.ndarray]:
        """The chunks the codec thread has finished for u, in order (all of them when `wait`)."""
        while u.decoding and (wait or u.decoding[0].done()):
            u.chunks.append(u.decoding.popleft().result())
            yield u.chunks[-1]

    # -- an utterance, step by step ------------------------------------------------------------------
    def start(self, text: str, voice: str, *, chunk_frames: int = defaults.CHUNK_FRAMES,
              first_chunk_frames: int = defaults.FIRST_CHUNK_FRAMES,
              seed: int | None = None, steps: int | None = None, cfg_alpha: float = defaults.CFG_ALPHA,
              max_frames: int | None = None, noise: np.ndarray | None = None, normalize: bool = True,
              lang: str | None = None, ssml: bool | None = None, lexicon=None, timings: bool = False) -> Utterance:
        """Check a request and return its utterance, not yet begun: each `step` makes one frame of it.
        The arguments are those of `stream`; a bad one raises UsageError here, before any work."""
        if chunk_frames < 1 or first_chunk_frames < 1:
            raise UsageError(f"chunk_frames and first_chunk_frames must be >= 1, found {chunk_frames} "
                             f"and {first_chunk_frames}")
        n_acoustic = self.audio_layout["n_acoustic_codebook"]
        steps = self.manifest["model"]["flow_head"]["n_decoding_steps"] if steps is None else steps
        check_request(text, steps, cfg_alpha, max_frames, seed)  # the text as given: its errors name its positions
        self.voice(voice)
        run, rng = _Run(), None
        script = run.time("tokenize_ms", lambda: self.script(text, voice, normalize=normalize, lang=lang, ssml=ssml,
                                                         lexicon=lexicon, timings=timings))
        run.spoken_text = " ".join(p for p in script if isinstance(p, str))
        if noise is not None:
            noise = np.asarray(noise, dtype=f32)
            if noise.ndim != 2 or noise.shape[1] != n_acoustic:
                raise UsageError(f"noise must be float32 [frames, {n_acoustic}], found {list(noise.shape)}")
            max_frames = len(noise) if max_frames is None else max_frames
            if max_frames > len(noise):
                raise UsageError(f"max_frames {max_frames} needs {max_frames} rows of noise, found {len(noise)}")
        else:
            run.seed = secrets.randbits(63) if seed is None else int(seed)
            rng = np.random.default_rng(run.seed)
        left = defaults.MAX_FRAMES * 64 if max_frames is None else int(max_frames)  # the caller's total
        pieces = script
        run.finished = True
        return Utterance(voice, pieces, steps, float(cfg_alpha), chunk_frames, first_chunk_frames, left, run,
                         noise, rng)

    def step(self, u: Utterance) -> np.ndarray:
        """Make u's next frame (the first frame of a piece prefills it first) and return the audio it
        completes: a chunk as `stream` yields them, or an empty array while a chunk fills up; the step
        that ends u sets `u.done`. Utterances may take turns step by step: the cache changes hands at
        the step (see `suspend`), and each one's audio is what it would have been alone."""
        with self._lock:
            return self._step(u)

    def suspend(self, u: Utterance) -> None:
        """Set u aside: the KV rows it has written are copied out of the cache into `u.kv`, so that
        another utterance may use the cache; u's next `step` copies them back. (Done by `step` itself
        when another utterance's turn comes; this frees the cache for direct backbone calls.)"""
        with self._lock:
            self._suspend(u)

    def close(self, u: Utterance) -> Result:
        """End u, spoken or not: its KV rows are freed and a Result holds what it made (the audio is
        the chunks `step` returned)."""
        with self._lock:
            return self._close(u)

    def _step(self, u: Utterance, pool: ThreadPoolExecutor | None = None) -> np.ndarray:
        """As `step`; with a `pool`, chunks after u's first are decoded there (u.decoding) and not returned."""
        if u.done:
            return np.zeros(0, dtype=f32)
        self._resume(u)
        if u.hidden is None:
            silence = self._between(u)
            if silence is not None:
                if pool is not None and (u.chunks or u.decoding):  # in order behind the chunks being decoded
                    done = Future()
                    done.set_result(silence)
                    u.decoding.append(done)
                    return np.zeros(0, dtype=f32)
                u.chunks.append(silence)
                return silence
            self._begin_piece(u)
        frame = self._next_frame(u)
        if frame is not None:
            u.pending.append(frame)
            if len(u.pending) < (u.chunk_frames if u.chunks else u.first_chunk_frames):
                return np.zeros(0, dtype=f32)
        chunk = np.zeros(0, f32)
        if u.pending and pool is not None and (u.chunks or u.decoding):  # the first chunk (first audio) is not
            u.decoding.append(pool.submit(u.run.time, "codec_ms", u.codec.decode, np.array(u.pending)))
        elif u.pending:
            chunk = u.run.time("codec_ms", u.codec.decode, np.array(u.pending))
        u.pending = []
        if len(chunk):
            u.chunks.append(chunk)
        if frame is None:  # the piece ended: its last frames were decoded with its own codec state
            self._end_piece(u)
        return chunk

    def _events(self, u: Utterance) -> None:
        """Record the events that come next in u's script; u is done when nothing is left."""
        while u.piece + 1 < len(u.pieces) and isinstance(u.pieces[u.piece + 1], Event):
            u.piece += 1
            u.run.events.append(replace(u.pieces[u.piece], sample=u.samples))
        if u.piece + 1 == len(u.pieces):
            u.done = True
            if self._holder is u:
                self._holder = None

    def _between(self, u: Utterance) -> np.ndarray | None:
        """Between two pieces: the events up to the next prompt; a silence there is returned (the chunk of
        this step), a prompt is left to `_begin_piece`."""
        self._events(u)
        if u.done or not isinstance(u.pieces[u.piece + 1], Silence):
            return None
        u.piece += 1
        samples = u.pieces[u.piece].samples
        u.samples += samples
        u.silent += samples
        self._events(u)
        return np.zeros(samples, dtype=f32)

    def _begin_piece(self, u: Utterance) -> None:
        """Prefill u's next piece: its prompt, guard and codec state."""
        run = u.run
        u.piece += 1
        prompt = run.time("tokenize_ms", self.prompt, u.pieces[u.piece], u.voice)
        x = run.time("tokenize_ms", self.prompt_embeddings, prompt, u.voice)
        room = self.max_context - len(prompt)
        if room < 1:
            raise VoxtralEdgeError(f"the prompt takes {len(prompt)} positions, max_context is "
                                   f"{self.max_context}: shorten the text")
        u.text_tokens = len(prompt) - self.voices[u.voice] - 5
        u.guard = min(room, defaults.MAX_FRAMES, RUNAWAY_FRAMES + RUNAWAY_FRAMES_PER_TOKEN * u.text_tokens)
        u.limit = min(u.guard, u.left)
        run.prompt_tokens += len(prompt)
        hidden, logits = run.time("prefill_ms", self._prefill, prompt, x, u.voice)
        u.hidden, u.logits, u.position = hidden[-1], logits, len(prompt)
        u.made, u.fed, u.ended, u.codec = 0, True, False, self.codec_stream()

    def _next_frame(self, u: Utterance) -> np.ndarray | None:
        """u's next frame of codes (without specials), or None when its piece has ended (END_AUDIO, or
        its limit reached)."""
        layout, run = self.audio_layout, u.run
        if u.made == u.limit:
            return None
        if not u.fed:  # the frame made last goes into the backbone first
            u.hidden, u.logits = run.time("backbone_ms", self.backbone_step, run.frames[-1], u.position)
            u.position, u.fed = u.position + 1, True
        semantic = int(np.argmax(u.logits))
        if semantic == layout["end_audio"]:
            u.ended = True
            return None
        frame_noise = u.noise[len(run.frames)] if u.noise is not None else \
            u.rng.standard_normal(layout["n_acoustic_codebook"], dtype=f32)
        acoustic = run.time("flow_ms", self.acoustic_codes, u.hidden, frame_noise, u.steps, u.cfg_alpha)
        frame = np.concatenate([[semantic - layout["n_specials"]], acoustic])
        run.frames.append(frame)
        u.samples += self.samples_per_frame
        u.made, u.left, u.fed = u.made + 1, u.left - 1, False
        return frame

    def _end_piece(self, u: Utterance) -> None:
        run, last = u.run, not any(isinstance(p, (str, Silence)) for p in u.pieces[u.piece + 1:])
        run.finished = run.finished and u.ended
        if not u.ended and u.made == u.guard:  # stopped by the guard, not by the caller's max_frames
            warnings.warn(RunawayWarning(
                f"piece {sum(isinstance(p, str) for p in u.pieces[:u.piece + 1])} of "
                f"{sum(isinstance(p, str) for p in u.pieces)} did not end after {u.guard} frames "
                f"({u.guard * 0.08:.1f} s, no END_AUDIO for its {u.text_tokens} text tokens); stopped it there"),
                stacklevel=4)
        if u.left <= 0:
            run.finished = run.finished and last
        u.hidden = u.logits = u.codec = None
        u.position = 0
        if u.left <= 0:
            u.done = True
            if self._holder is u:
                self._holder = None
        elif last:
            self._events(u)

    def _suspend(self, u: Utterance) -> None:
        if self._holder is u:
            u.kv = [a[:, :, :u.position].copy() for a in self._kv_arrays]
            self._holder = None

    def _resume(self, u: Utterance) -> None:
        """Make the cache hold u's rows, setting aside those of the utterance that held it."""
        if self._holder is u:
            return
        if self._holder is not None:
            self._suspend(self._holder)
        if u.kv is not None:
            for a, rows in zip(self.kv_cache, u.kv):
                a[:, :, :rows.shape[2]] = rows
            u.kv = None
        self._holder = u

    def _close(self, u: Utterance) -> Result:
        if self._holder is u:
            self._holder = None
        u.kv = None
        if not u.done:
            u.run.finished, u.done = False, True
        audio = np.concatenate(u.chunks) if u.chunks else np.zeros(0, dtype=f32)
        return u.run.result(audio, self.audio_layout["num_codebooks"], self.sample_rate,
                            frames_heard=(len(audio) - u.silent) // self.samples_per_frame)


@dataclass(eq=False)
class Utterance:
    """One utterance in progress, as data: what is left to say, where the backbone stands, the codec's
    carried state and the noise generator. `Synthesizer.start` makes one and `step` advances it by one
    frame; while another utterance has the KV cache, `kv` holds the rows this one has written."""

    voice: str
    pieces: list  # its script: prompts (str, see Synthesizer.pieces), Silences and Events, in order
    steps: int
    cfg_alpha: float
    chunk_frames: int
    first_chunk_frames: int
    left: int  # frames the caller still allows
    run: _Run  # frames made so far, seed, timings
    noise: np.ndarray | None = None  # row f is frame f's initial noise, when given
    rng: np.random.Generator | None = None  # else each frame draws its noise from this
    piece: int = -1  # the piece being spoken (-1: none begun)
    position: int = 0  # KV rows the current piece has written
    hidden: np.ndarray | None = None  # the backbone's last hidden state (None: between pieces)
    logits: np.ndarray | None = None  # and its semantic logits: the next frame comes from them
    fed: bool = True  # the last frame made has gone through the backbone
    ended: bool = False  # the current piece met END_AUDIO
    made: int = 0  # frames of the current piece
    limit: int = 0  # frames the current piece may make
    guard: int = 0  # its runaway guard
    text_tokens: int = 0
    codec: CodecStream | None = None
    pending: list[np.ndarray] = field(default_factory=list)  # frames made, not yet decoded
    chunks: list[np.ndarray] = field(default_factory=list)  # the audio returned so far
    decoding: deque[Future] = field(default_factory=deque)  # chunks on the codec thread, in order
    kv: list[np.ndarray] | None = None  # its KV rows [:position] per layer while set aside
    done: bool = False
    samples: int = 0  # samples of audio made so far (frames and silences): where the next event falls
    silent: int = 0  # ... of which silence

    @property
    def events(self) -> list[Event]:
        """The marks, sentence starts and rate changes reached so far."""
        return self.run.events




def check_request(text, steps, cfg_alpha, max_frames, seed) -> None:
    """Refuse what cannot be spoken, before any work: UsageError says what is wrong and what is accepted."""
    if not isinstance(text, str):
        raise UsageError(f"text must be a str, found {type(text).__name__}")
    if not text.strip():
        raise UsageError("text is empty: give something to say")
    for i, ch in enumerate(text):
        if ch not in "\t\n\r" and (unicodedata.category(ch) == "Cc" or 0xD800 <= ord(ch) <= 0xDFFF):
            raise UsageError(f"text has the control character U+{ord(ch):04X} at position {i}; printable text, "
                             f"tabs and newlines are accepted")
    for name, value, low, high in (("steps", steps, 1, defaults.MAX_STEPS), ("max_frames", max_frames, 1, None),
                                   ("seed", seed, 0, 2**63 - 1)):
        if value is None and name != "steps":
            continue
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low or (
                high is not None and value > high):
            accepted = f"an integer from {low} to {high}" if high is not None else f"an integer >= {low}"
            raise UsageError(f"{name} must be {accepted}, found {value!r}")
    if isinstance(cfg_alpha, bool) or not isinstance(cfg_alpha, (int, float)) or not math.isfinite(cfg_alpha) or \
            not 0 <= cfg_alpha <= defaults.MAX_CFG:
        raise UsageError(f"cfg_alpha must be a number from 0 to {defaults.MAX_CFG:g}, found {cfg_alpha!r}")


class RunawayWarning(UserWarning):
    """A piece of text produced far more audio than its length explains, without END_AUDIO."""


class _Run:
    """What one utterance has produced so far, and where its time went (ms)."""

    def __init__(self):
        self.start = time.perf_counter()
        self.timings = dict.fromkeys(("tokenize_ms", "prefill_ms", "backbone_ms", "flow_ms", "codec_ms"), 0.0)
        self.frames: list[np.ndarray] = []
        self.seed: int | None = None
        self.prompt_tokens = 0
        self.finished = False
        self.spoken_text = ""
        self.events: list[Event] = []

    def time(self, key: str, fn, *args):
        t0 = time.perf_counter()
        try:
            return fn(*args)
        finally:
            self.timings[key] += 1e3 * (time.perf_counter() - t0)

    def result(self, audio: np.ndarray, n_codebooks: int, sample_rate: int, frames_heard: int | None = None) -> Result:
        frames = self.frames if frames_heard is None else self.frames[:frames_heard]
        codes = np.array(frames, dtype=np.int32).reshape(-1, n_codebooks)
        timings = dict(self.timings, total_ms=1e3 * (time.perf_counter() - self.start), frames=float(len(codes)))
        return Result(audio, codes, sample_rate, self.seed, self.prompt_tokens, self.finished, timings,
                      self.spoken_text, list(self.events))


class CodecStream:
    """The codec decoder's carried state (conv tails, windowed attention caches) between chunks: feed
    frames in order, get their audio; the chunks concatenate to the whole-utterance decode."""

    def __init__(self, synth: Synthesizer):
        self.session = synth.sessions["codec_decoder"]
        inputs = synth.manifest["graphs"]["codec_decoder"]["inputs"]
        self.state = {name: np.zeros(spec["shape"], f32) for name, spec in inputs.items()
                      if name not in ("codes", "frames_done")}
        self.outputs = ["audio"] + [f"next_{name}" for name in self.state]
        self.frames = 0

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """Audio of the next frames' codes [K, n_codebooks] (K >= 1)."""
        codes = np.asarray(codes, dtype=np.int64)
        out = self.session.run(self.outputs, {"codes": codes, "frames_done": np.array([self.frames], np.int64),
                                              **self.state})
        self.state = dict(zip(self.state, out[1:]))
        self.frames += len(codes)
        return out[0]
