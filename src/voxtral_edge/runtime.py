"""The runtime: a bundle folder -> speech, with onnxruntime, numpy and tokenizers only.

    prompt ids -> embeddings (text rows gathered from a memory-mapped table, voice rows over [AUDIO])
    backbone prefill (KV cache: one preallocated buffer per layer, bound as both past and present,
                      so GroupQueryAttention writes each new position in place)
    per frame:  semantic code = argmax(semantic_logits); END_AUDIO ends the utterance
                acoustic codes = one flow_head call: every Euler step, conditional and unconditional rows in
                                 one batch, guidance and rounding inside the graph
                next input = sum of one audio-embedding row per codebook -> one backbone step
    codes -> codec decoder -> 24 kHz float32 audio

A Synthesizer holds one KV cache of `batch` rows (`Synthesizer.open(..., batch=B)`, 1 by default), one
utterance per row; calls from several threads are serialized by a lock. An utterance can also be made step
by step (`start`, then `step` per frame): its state is an `Utterance` object. Several may take turns frame
by frame (each holds a row while it is stepped; when rows run out, the one stepped least recently has its
rows set aside and copied back at its next step), so that a scheduler can pause one utterance for another
and resume it; and up to `batch` of them make their next frames together (`step_many`): one backbone call
for all of them (each row at its own position) and one flow-head call, each utterance's codes the same
as alone. `run_many` keeps the rows full from a queue of utterances (continuous batching).
"""

from __future__ import annotations

import math
import mmap
import secrets
import unicodedata
import threading
import time
import warnings
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from . import defaults
from .errors import BundleError, UsageError, VoxtralEdgeError
from .htp import HtpBackbone, HtpCodec, HtpFlow, is_htp
from .machine import trim_heap
from .manifest import Manifest
from .prompt import SpeechSpecialIds, speech_prompt, voice_positions
from .sessions import SessionSettings, kernel_fallback, open_sessions
from .text import LANGUAGES, split_text, voice_language
from .text import ssml as ssml_module
from .text import normalize as normalize_text

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
                 parallel_open: bool = False, batch: int = 1, memory_arena: bool = True):
        self.manifest = m = manifest
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise UsageError(f"batch must be an integer >= 1, found {batch!r}")
        if batch > 1 and not m.batched:
            if any(is_htp(m, graph) for graph in ("backbone_step", "flow_head")):
                raise BundleError(f"{m.bundle}: its graphs in the NPU form take one utterance per call; use batch 1 "
                                  f"(batch {batch} asked)")
            shape = m["graphs"]["backbone_step"]["inputs"]["inputs_embeds"]["shape"]
            raise BundleError(f"{m.bundle}: its graphs take one utterance per call (exported before batching: "
                              f"backbone_step's inputs_embeds is {shape}); re-export it for batch {batch}, or use "
                              f"batch 1")
        self.batch = batch
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
                                   record=record, memory_arena=memory_arena)
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
        self._kv_arrays: list[np.ndarray] = []
        self._kv_pages: list[mmap.mmap] = []
        self._bindings: dict[tuple[int, int], tuple[ort.IOBinding, list[ort.OrtValue]]] = {}
        # graphs exported in the NPU form are called through their own conventions (voxtral_edge.htp)
        self._htp_backbone = HtpBackbone(self.sessions["backbone_step"], m, self.max_context) \
            if is_htp(m, "backbone_step") else None
        self._htp_flow = HtpFlow(self.sessions["flow_head"], m) if is_htp(m, "flow_head") else None
        self._prefix_cache: dict[str, list[np.ndarray]] = {}
        self._rows: list[Utterance | None] = [None] * batch  # the utterance holding each row of the KV cache
        self._steps = 0  # batched steps made: each utterance records its last, the least recent is set aside first
        self.last_result: Result | None = None
        # called with the utterances of every step (step, step_many, run_many, stream...) before it is made:
        # a place to count or log what shares the backbone's calls; it must not step or close them
        self.on_step: Callable[[list[Utterance]], None] | None = None
        self._lock = threading.RLock()  # reentrant: a run_many consumer may close what it took

    @classmethod
    def open(cls, bundle: str | Path, *, threads: int | None = None, max_context: int | None = None,
             verify: bool = True, saved_graphs: bool | None = None, codec_threads: int | None = None,
             codec_pipeline: bool = False, providers: tuple[str, ...] = ("cpu",),
             profiling: str | None = None, allow_fallback: bool = False, soc: str | None = None,
             record: dict | None = None, release_mapped: bool = True, parallel_open: bool = False,
             batch: int = 1, memory_arena: bool = True) -> "Synthesizer":
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
        `stream` decodes audio on a second thread while the next frames are computed (same audio). `batch` is
        the number of utterances that can make their frames together (`step_many`, `run_many`): the KV cache
        has that many rows, fixed for the session (a bundle exported before batching, or with graphs in the NPU
        form, takes 1). `memory_arena` False makes the sessions without onnxruntime's CPU memory arena (each
        run's tensors come from the C heap and go back to it: see `voxtral_edge.sessions`)."""
        return cls(Manifest.load(bundle, verify=verify), threads=threads, max_context=max_context,
                   saved_graphs=saved_graphs, codec_threads=codec_threads, codec_pipeline=codec_pipeline,
                   providers=providers, profiling=profiling, allow_fallback=allow_fallback, soc=soc, record=record,
                   release_mapped=release_mapped, parallel_open=parallel_open, batch=batch,
                   memory_arena=memory_arena)

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
        """The KV cache: one preallocated float32 array [batch, kv_heads, max_context, head_dim] per layer and
        kind (layer 0's keys, its values, layer 1's keys, ...), row r an utterance's, bound in place as both
        past and present of the backbone, so that writing an array writes the cache (allocated on first use).
        Its pages are anonymous memory without huge pages: only the positions written become resident. In a
        bundle in the NPU form: one row, uint16 when it quantized the cache, and [.., the compiled positions, ..]."""
        if self._htp_backbone is not None:
            return self._htp_backbone.arrays
        if not self._kv_arrays:
            b = self.manifest["model"]["backbone"]
            shape = (self.batch, b["n_kv_heads"], self.max_context, b["head_dim"])
            size = int(np.prod(shape)) * np.dtype(f32).itemsize
            # (numpy would ask for transparent huge pages: the first write to a head's row would then make a
            # whole 2 MB resident, every row of the cache at once)
            self._kv_pages = [mmap.mmap(-1, size) for _ in range(2 * b["n_layers"])]
            self._kv_arrays = [np.frombuffer(pages, dtype=f32).reshape(shape) for pages in self._kv_pages]
        return self._kv_arrays

    @property
    def cached_voices(self) -> tuple[str, ...]:
        """The voices whose prompt prefix (keys and values) is kept, least recently used first."""
        return tuple(self._prefix_cache)

    def _binding(self, first: int, stop: int) -> ort.IOBinding:
        """The backbone's binding with rows [first, stop) of every KV array as both past and present (made once
        per range: each OrtValue wraps a contiguous view of the arrays, no copy)."""
        if (first, stop) not in self._bindings:
            io = self.sessions["backbone_step"].io_binding()
            values = [ort.OrtValue.ortvalue_from_numpy(a[first:stop]) for a in self.kv_cache]
            for i in range(len(values) // 2):
                for j, kind in enumerate(("key", "value")):
                    io.bind_ortvalue_input(f"past_{kind}_{i}", values[2 * i + j])
                    io.bind_ortvalue_output(f"present_{kind}_{i}", values[2 * i + j])
            self._bindings[first, stop] = io, values
        return self._bindings[first, stop][0]

    def backbone(self, x: np.ndarray, past_length: int) -> tuple[np.ndarray, np.ndarray]:
        """Run x [T, dim] at positions past_length.. in row 0 of the cache; returns (hidden states [T, dim],
        semantic logits of the last position). The row keeps everything before past_length and receives
        these positions (an utterance in progress there must be `suspend`ed first, or its rows are
        overwritten)."""
        hidden, logits = self.backbone_rows(np.asarray(x)[None], [past_length])
        return hidden[0], logits[0]

    def backbone_rows(self, x: np.ndarray, positions, first_row: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Run rows first_row.. of the cache in one call: x [n, T, dim], row first_row + i at positions[i]..
        (T > 1, a prompt, for one row only: onnxruntime's attention takes a prompt after earlier positions
        for a batch of 1). Returns (hidden states [n, T, dim], semantic logits [n, n_logits] of each row's last
        position); each row's keys and values are written at its own positions, nothing else is touched."""
        x = np.ascontiguousarray(x, dtype=f32)
        positions = np.asarray(positions, dtype=np.int64).reshape(-1)
        n, t = x.shape[:2]
        if len(positions) != n or not 0 <= first_row <= self.batch - n or (t > 1 and n > 1):
            raise UsageError(f"backbone_rows: x {list(x.shape)} and {len(positions)} positions from row {first_row}: "
                             f"expected one position per row, rows within 0..{self.batch - 1}, and T > 1 for one "
                             f"row only")
        if positions.min() < 0 or positions.max() + t > self.max_context:
            raise VoxtralEdgeError(f"context full: {int(positions.max()) + t} positions needed, max_context is "
                                   f"{self.max_context}")
        if self._htp_backbone is not None:  # one row (batch 1), called through its own conventions
            hidden, logits = self._htp_backbone.run(x[0], int(positions[0]))
            return hidden[None], logits[None]
        io = self._binding(first_row, first_row + n)
        io.bind_cpu_input("inputs_embeds", x)
        io.bind_cpu_input("past_length", positions)
        # rebound every run: their shape follows T and n (an output bound once keeps its first shape)
        io.bind_output("hidden_states")
        io.bind_output("semantic_logits")
        self.sessions["backbone_step"].run_with_iobinding(io)
        outputs = io.get_outputs()  # the KV buffers first, then the two bound last
        return outputs[-2].numpy(), outputs[-1].numpy()

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
        return self.flow_batch(np.asarray(h)[None], np.asarray(noise)[None], steps, [cfg_alpha])[0][0]

    def flow_latent(self, h: np.ndarray, noise: np.ndarray, steps: int, cfg_alpha: float) -> np.ndarray:
        """The same integration's end point, x at t = 1 [n_acoustic], before it is rounded to codes."""
        return self.flow_batch(np.asarray(h)[None], np.asarray(noise)[None], steps, [cfg_alpha])[1][0]

    def flow_batch(self, h: np.ndarray, noise: np.ndarray, steps: int,
                   cfg_alphas: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
        """One frame of n utterances in one flow_head call: h [n, dim], noise [n, n_acoustic], their guidance
        strengths (all 1, or none 1: a strength of 1 runs without the unconditional row, and mixing the two
        would change those utterances' numbers) -> (codes [n, n_acoustic], latent [n, n_acoustic]), each row
        what it would be alone."""
        alphas = [float(a) for a in cfg_alphas]
        unguided = [a == 1 for a in alphas]
        if any(unguided) and not all(unguided):
            raise UsageError(f"flow_batch: guidance strengths {alphas} mix 1 with others; call once for each kind")
        # with alpha 1 the unconditional row has weight 0: the graph runs the conditional row alone
        weights = np.array([[1.0] if unguided[0] else [a, 1 - a] for a in alphas], dtype=f32)
        h = np.asarray(h, dtype=f32).reshape(len(alphas), -1)
        noise = np.asarray(noise, dtype=f32).reshape(len(alphas), -1)
        if self._htp_flow is not None:  # one utterance per call (batch 1)
            return tuple(np.concatenate(parts) for parts in zip(*(
                self._htp_flow.run(h[i], noise[i], steps, a) for i, a in enumerate(alphas))))
        timesteps = np.linspace(0, 1, steps + 1, dtype=f32)
        if not self.manifest.batched:  # a bundle from before batching: cfg_weights [R], one utterance per call
            return tuple(np.concatenate(parts) for parts in zip(*(self.sessions["flow_head"].run(["codes", "latent"], {
                "noise": noise[i:i + 1], "h": h[i:i + 1], "timesteps": timesteps, "cfg_weights": weights[i]})
                for i in range(len(alphas)))))
        codes, latent = self.sessions["flow_head"].run(["codes", "latent"], {
            "noise": noise, "h": h, "timesteps": timesteps, "cfg_weights": weights})
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
            if self._rows[0] is not None:  # prefill and backbone_step use row 0
                self._suspend(self._rows[0])
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
    def _prefill(self, prompt: list[int], x: np.ndarray, voice: str, row: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """`prefill` into a row of the cache, with the prompt's embeddings x already made."""
        prefix = voice_positions(prompt, self.ids).stop + 1
        kv = self.kv_cache
        cached = self._prefix_cache.pop(voice, None)
        if cached is None:
            self.backbone_rows(x[None, :prefix], [0], row)
            cached = [a[row, :, :prefix].copy() for a in kv]
        else:
            for a, c in zip(kv, cached):
                a[row, :, :prefix] = c
        self._prefix_cache[voice] = cached  # most recent last
        while len(self._prefix_cache) > PREFIX_CACHE_VOICES:
            self._prefix_cache.pop(next(iter(self._prefix_cache)))
        hidden, logits = self.backbone_rows(x[None, prefix:], [prefix], row)
        return hidden[0], logits[0]

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

    def sentences(self, text: str, voice: str) -> list[str]:
        """The sentences of `text` (the text front-end's splitter), a sentence too long for the context split
        further, as `pieces` does but never packed together: each becomes an utterance of its own."""
        budget = max(1, (self.max_context - self.voices[voice] - 5) // FRAMES_PER_TEXT_TOKEN)
        return split_text(text, budget, lambda piece: len(self.tokenizer.encode(piece, add_special_tokens=False).ids))

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

    def stream_sentences(self, text: str, voice: str, *, chunk_frames: int = defaults.CHUNK_FRAMES,
                         first_chunk_frames: int = defaults.FIRST_CHUNK_FRAMES, seed: int | None = None,
                         steps: int | None = None, cfg_alpha: float = defaults.CFG_ALPHA,
                         max_frames: int | None = None, normalize: bool = True, lang: str | None = None,
                         lexicon=None, timings: bool = False, events: list | None = None) -> Iterator[np.ndarray]:
        """Speak a text of several sentences `batch` at a time, yielding its audio in reading order: each
        sentence (`sentences`, of the normalized text) is an utterance of its own, sentence i with seed
        seed + i (mod 2^63; a random seed when None, kept in the result), made beside the others through
        `run_many`. The first sentence's chunks come as they are made (the first after
        `first_chunk_frames`), each later sentence's once every sentence before it is out, the part made
        meanwhile at once; no silence is added between sentences. Each sentence's audio is what it would
        be alone (`synthesize(sentence, seed=seed + i, normalize=False)`). `max_frames` bounds the whole
        text's frames (the audio stops there). With `timings`, each sentence's start is an Event("sentence")
        at its first sample, added to `events` (when given) as its audio begins; `last_result` holds the
        whole text's codes, audio, events and timings (each stage summed over the sentences: per frame, what
        one sentence waited). Plain text only: SSML (marks, breaks, rates) is spoken as one utterance."""
        check_request(text, self.manifest["model"]["flow_head"]["n_decoding_steps"] if steps is None else steps,
                      cfg_alpha, max_frames, seed)
        self.voice(voice)
        start = time.perf_counter()
        spoken = self.spoken_text(text, voice, normalize=normalize, lang=lang, lexicon=lexicon)
        if not any(c.isalnum() for c in spoken):
            raise UsageError(f"text {text[:40]!r}: nothing is left to speak once normalized")
        seed = secrets.randbits(63) if seed is None else int(seed)
        sentences = self.sentences(spoken, voice)
        utterances = [self.start(sentence, voice, chunk_frames=chunk_frames,
                                 first_chunk_frames=first_chunk_frames if i == 0 else chunk_frames,
                                 seed=(seed + i) % 2**63, steps=steps, cfg_alpha=cfg_alpha, max_frames=max_frames,
                                 normalize=False, ssml=False) for i, sentence in enumerate(sentences)]
        events, begun = ([] if events is None else events), set()
        waiting = {id(u): deque() for u in utterances}  # chunks made ahead of their turn
        done, turn, heard = set(), 0, []
        room = None if max_frames is None else max_frames * self.samples_per_frame  # samples still allowed
        made = self.run_many(utterances)
        try:
            for u, chunk in made:
                if chunk is None:
                    done.add(id(u))
                else:
                    waiting[id(u)].append(chunk)
                while turn < len(utterances) and room != 0:
                    current = waiting[id(utterances[turn])]
                    if timings and current and turn not in begun:  # this sentence's audio begins here
                        begun.add(turn)
                        events.append(Event("sentence", sentences[turn], sample=sum(map(len, heard))))
                    while current and room != 0:
                        chunk = current.popleft()[:room]
                        room = None if room is None else room - len(chunk)
                        heard.append(chunk)
                        yield chunk
                    if id(utterances[turn]) not in done:
                        break
                    turn += 1
                if room == 0:
                    break
        finally:
            made.close()
            results = [self.close(u) for u in utterances]
            errors = [u.error for u in utterances if u.error is not None]
            audio = np.concatenate(heard) if heard else np.zeros(0, dtype=f32)
            frames = len(audio) // self.samples_per_frame
            codes = np.concatenate([r.codes for r in results])[:frames]
            stages = {key: sum(r.timings[key] for r in results) for key in results[0].timings
                      if key.endswith("_ms") and key != "total_ms"}
            self.last_result = Result(audio, codes, self.sample_rate, seed, sum(r.prompt_tokens for r in results),
                                      all(r.finished for r in results) and frames == sum(len(r.codes) for r in results),
                                      dict(stages, total_ms=1e3 * (time.perf_counter() - start), frames=float(frames),
                                           sentences=float(len(results))), spoken, list(events))
        if errors:
            raise errors[0]

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
        that ends u sets `u.done`. Utterances may take turns step by step: each holds a row of the cache
        while it is stepped (see `suspend`), and each one's audio is what it would have been alone."""
        with self._lock:
            return self._step(u)

    def step_many(self, utterances: Sequence[Utterance]) -> list[np.ndarray]:
        """Make the next frame of each of up to `batch` distinct utterances together and return their chunks
        (as `step` does, in their order): one backbone call steps every row, one flow-head call per kind of
        Euler schedule and guidance makes their acoustic codes. Each utterance's codes and audio are what
        it would have made alone (`step`), whoever it shares the step with (see `voxtral_edge.export.graphs`
        for what holds this on which kernels). An utterance whose own request fails here (a prompt the
        context cannot hold) ends with `u.error` set and an empty chunk; the others go on."""
        with self._lock:
            return self._step_many(list(utterances))

    def run_many(self, utterances: Iterable[Utterance]) -> Iterator[tuple[Utterance, np.ndarray | None]]:
        """Continuous batching: step up to `batch` of `utterances` together, frame by frame, and whenever one
        is done take the next (in order) into its row. Yields (u, chunk) for each chunk as it is made and
        (u, None) once u is done: `close(u)` then gives its Result (and `u.error` says if its request
        failed). `utterances` is read only when a row is free; it may yield None for "none waiting now"
        (the rows in use go on; with none in use, run_many returns). With `codec_pipeline`, chunks after an
        utterance's first are decoded on the codec's thread and yielded when ready, in order. Stopping early
        (closing the generator) closes nothing: close the utterances you took."""
        queue, live, pool = iter(utterances), [], self._codec_pool()
        with self._lock:
            while True:
                while len(live) < self.batch and (u := next(queue, None)) is not None:
                    live.append(u)
                if not live:
                    return
                chunks = self._step_many(live, pool)
                for u, chunk in zip(list(live), chunks):
                    if len(chunk):
                        yield u, chunk
                    for decoded in self._decoded(u, wait=u.done):
                        yield u, decoded
                    if u.done:
                        live.remove(u)
                        self._release(u)
                        yield u, None

    def suspend(self, u: Utterance) -> None:
        """Set u aside: the KV rows it has written are copied out of the cache into `u.kv` and its row is
        freed, so that another utterance may use it; u's next `step` copies them back (into any free row).
        (Done by the step itself when rows run out: the utterance stepped least recently is set aside; this
        frees row 0 for direct backbone calls.)"""
        with self._lock:
            self._suspend(u)

    def close(self, u: Utterance) -> Result:
        """End u, spoken or not: its row is freed and a Result holds what it made (the audio is the chunks
        `step` returned)."""
        with self._lock:
            return self._close(u)

    def _step(self, u: Utterance, pool: ThreadPoolExecutor | None = None) -> np.ndarray:
        """As `step` (a failure of u's own request raised); with a `pool`, see `_step_many`."""
        chunk = self._step_many([u], pool)[0]
        if u.error is not None:
            raise u.error
        return chunk

    def _step_many(self, utterances: list[Utterance], pool: ThreadPoolExecutor | None = None) -> list[np.ndarray]:
        """As `step_many`; with a `pool`, chunks after an utterance's first are decoded there (u.decoding) and
        not returned."""
        if len(utterances) > self.batch or len(set(map(id, utterances))) < len(utterances):
            raise UsageError(f"step_many: {len(utterances)} utterances for a batch of {self.batch} rows (each at "
                             f"most once)")
        if self.on_step is not None:
            self.on_step(list(utterances))
        live = [u for u in utterances if not u.done]
        self._seat(live)
        chunks = {}
        for u in list(live):
            if u.hidden is None:
                silence = self._between(u)
                if silence is not None or u.done:  # a break is this step's chunk; or nothing was left
                    live.remove(u)
                    if silence is not None and pool is not None and (u.chunks or u.decoding):
                        done = Future()  # in order behind the chunks being decoded
                        done.set_result(silence)
                        u.decoding.append(done)
                    elif silence is not None:
                        u.chunks.append(silence)
                        chunks[u] = silence
                    continue
                try:
                    self._begin_piece(u)
                except VoxtralEdgeError as e:  # this request's own failure: the others go on
                    u.error, u.done = e, True
                    self._release(u)
                    live.remove(u)
        frames = self._next_frames(live)
        return [self._emit(u, frames[u], pool) if u in frames else chunks.get(u, np.zeros(0, f32))
                for u in utterances]

    def _seat(self, utterances: list[Utterance]) -> None:
        """Give each utterance a row of the cache (its own when it holds one), copying back the rows of one
        set aside; when rows run out, the holders stepped least recently (not among these) are set aside."""
        self._steps += 1
        for u in utterances:
            u.last_step = self._steps
        for u in [u for u in utterances if u.row is None]:
            if None not in self._rows:
                holders = [h for h in self._rows if h.last_step < self._steps]
                self._suspend(min(holders, key=lambda h: h.last_step))
            u.row = self._rows.index(None)
            self._rows[u.row] = u
            if u.kv is not None:
                for a, rows in zip(self.kv_cache, u.kv):
                    a[u.row, :, :rows.shape[1]] = rows
                u.kv = None

    def _emit(self, u: Utterance, frame: np.ndarray | None, pool: ThreadPoolExecutor | None) -> np.ndarray:
        """After u's frame (None: its piece has ended): the chunk it completes, and the piece's end."""
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
            self._release(u)

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
        """Prefill u's next piece in its row: its prompt, guard and codec state."""
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
        hidden, logits = run.time("prefill_ms", self._prefill, prompt, x, u.voice, u.row)
        u.hidden, u.logits, u.position = hidden[-1], logits, len(prompt)
        u.made, u.fed, u.ended, u.codec = 0, True, False, self.codec_stream()

    def _next_frames(self, utterances: list[Utterance]) -> dict[Utterance, np.ndarray | None]:
        """Each utterance's next frame of codes (without specials), or None when its piece has ended
        (END_AUDIO, or its limit reached): the frames made last go through the backbone together first,
        then the flow head makes the acoustic codes of those that go on, together."""
        layout = self.audio_layout
        frames: dict[Utterance, np.ndarray | None] = {u: None for u in utterances if u.made == u.limit}
        going = [u for u in utterances if u not in frames]
        self._feed([u for u in going if not u.fed])
        made = []
        for u in going:
            semantic = int(np.argmax(u.logits))
            if semantic == layout["end_audio"]:
                u.ended, frames[u] = True, None
                continue
            noise = u.noise[len(u.run.frames)] if u.noise is not None else \
                u.rng.standard_normal(layout["n_acoustic_codebook"], dtype=f32)
            made.append((u, semantic, noise))
        kinds: dict[tuple[int, bool], list] = {}  # one flow-head call per Euler schedule and guidance kind
        for item in made:
            kinds.setdefault((item[0].steps, item[0].cfg_alpha == 1), []).append(item)
        for group in kinds.values():
            start = time.perf_counter()
            codes, _ = self.flow_batch(np.stack([u.hidden for u, _, _ in group]), np.stack([n for _, _, n in group]),
                                       group[0][0].steps, [u.cfg_alpha for u, _, _ in group])
            elapsed = 1e3 * (time.perf_counter() - start)
            for (u, semantic, _), acoustic in zip(group, codes):
                u.run.timings["flow_ms"] += elapsed  # each waited for the whole call
                frame = np.concatenate([[semantic - layout["n_specials"]], acoustic])
                u.run.frames.append(frame)
                u.samples += self.samples_per_frame
                u.made, u.left, u.fed = u.made + 1, u.left - 1, False
                frames[u] = frame
        return frames

    def _feed(self, utterances: list[Utterance]) -> None:
        """The frame each of these made last into the backbone, in one call over the rows from the lowest of
        theirs to the highest; a row between them that is not stepped runs as a filler at its holder's next
        position (written there and overwritten by the holder's own next step before anything reads it; a
        free row at position 0)."""
        if not utterances:
            return
        first, stop = min(u.row for u in utterances), max(u.row for u in utterances) + 1
        x = np.zeros((stop - first, 1, self.manifest["model"]["backbone"]["dim"]), dtype=f32)
        positions = np.zeros(stop - first, dtype=np.int64)
        for r in range(first, stop):
            holder = self._rows[r]
            if holder is not None and holder.position < self.max_context:
                positions[r - first] = holder.position
        for u in utterances:
            x[u.row - first, 0] = self.audio_embedding(u.run.frames[-1])
        start = time.perf_counter()
        hidden, logits = self.backbone_rows(x, positions, first)
        elapsed = 1e3 * (time.perf_counter() - start)
        for u in utterances:
            u.run.timings["backbone_ms"] += elapsed
            u.hidden, u.logits = hidden[u.row - first, -1], logits[u.row - first]
            u.position, u.fed = u.position + 1, True

    def _end_piece(self, u: Utterance) -> None:
        run, last = u.run, not any(isinstance(p, (str, Silence)) for p in u.pieces[u.piece + 1:])
        run.finished = run.finished and u.ended
        if not u.ended and u.made == u.guard:  # stopped by the guard, not by the caller's max_frames
            warnings.warn(RunawayWarning(
                f"piece {sum(isinstance(p, str) for p in u.pieces[:u.piece + 1])} of "
                f"{sum(isinstance(p, str) for p in u.pieces)} did not end after {u.guard} frames "
                f"({u.guard * 0.08:.1f} s, no END_AUDIO for its {u.text_tokens} text tokens); stopped it there"),
                stacklevel=5)
        if u.left <= 0:
            run.finished = run.finished and last
        u.hidden = u.logits = u.codec = None
        u.position = 0
        if u.left <= 0:
            u.done = True
            self._release(u)
        elif last:
            self._events(u)

    def _release(self, u: Utterance) -> None:
        """Free u's row: the next holder writes it from position 0; its pages go back to the system."""
        if u.row is None:
            return
        self._rows[u.row] = None
        row_bytes = self.kv_cache[0][0].nbytes
        start = -(-u.row * row_bytes // mmap.PAGESIZE) * mmap.PAGESIZE  # the whole pages inside the row
        length = ((u.row + 1) * row_bytes // mmap.PAGESIZE) * mmap.PAGESIZE - start
        if length > 0 and hasattr(mmap, "MADV_DONTNEED"):
            for pages in self._kv_pages:
                pages.madvise(mmap.MADV_DONTNEED, start, length)
        u.row = None

    def _suspend(self, u: Utterance) -> None:
        if u.row is not None:
            u.kv = [a[u.row, :, :u.position].copy() for a in self.kv_cache] if u.position else None
            self._release(u)

    def _close(self, u: Utterance) -> Result:
        self._release(u)
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
    frame; it holds row `row` of the KV cache while it is stepped, and while set aside `kv` holds what it
    wrote there."""

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
    row: int | None = None  # the row of the KV cache it holds
    last_step: int = 0  # the synthesizer's step count when it was last stepped
    error: VoxtralEdgeError | None = None  # why its request failed (it is then done)
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
