"""The runtime: a bundle folder -> speech, with onnxruntime, numpy and tokenizers only.

    prompt ids -> embeddings (text rows gathered from a memory-mapped table, voice rows over [AUDIO])
    backbone prefill (KV cache: one preallocated buffer per layer, bound as both past and present,
                      so GroupQueryAttention writes each new position in place)
    per frame:  semantic code = argmax(semantic_logits); END_AUDIO ends the utterance
                acoustic codes = Euler steps of the flow head, conditional and unconditional rows in one batch
                next input = sum of one audio-embedding row per codebook -> one backbone step
    codes -> codec decoder -> 24 kHz float32 audio

A Synthesizer holds one KV cache, so it serves one request at a time; calls from several threads are
serialized by a lock.
"""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from .errors import BundleError, VoxtralEdgeError
from .manifest import Manifest
from .prompt import SpeechSpecialIds, speech_prompt, voice_positions

DEFAULT_MAX_FRAMES = 2048  # the reference server's max_tokens: 164 s of audio
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

    @property
    def duration(self) -> float:
        return len(self.audio) / self.sample_rate


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

    def __init__(self, manifest: Manifest, threads: int | None = None, max_context: int | None = None):
        self.manifest = m = manifest
        self.audio_layout = m["audio"]
        self.sample_rate = int(self.audio_layout["sample_rate"])
        backbone = m["model"]["backbone"]
        self.max_context = int(backbone["max_context"]) if max_context is None else int(max_context)
        if not 1 <= self.max_context <= backbone["max_context"]:
            raise VoxtralEdgeError(f"max_context {max_context}: the bundle supports 1..{backbone['max_context']} "
                                   f"positions (re-export with a larger --max-context for more)")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
        self.sessions: dict[str, ort.InferenceSession] = {}
        for name, graph in m["graphs"].items():
            path = m.path(graph["file"])
            try:
                session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            except Exception as e:  # onnxruntime raises its own types for a graph it cannot load
                raise BundleError(f"{path}: onnxruntime cannot load it ({e})") from None
            have = ({i.name for i in session.get_inputs()}, {o.name for o in session.get_outputs()})
            want = (set(graph["inputs"]), set(graph["outputs"]))
            if have != want:
                raise BundleError(f"{path}: inputs/outputs {sorted(have[0])} -> {sorted(have[1])} differ from the "
                                  f"manifest's {sorted(want[0])} -> {sorted(want[1])}")
            self.sessions[name] = session
        self.tokenizer = Tokenizer.from_file(str(m.path(m["tokenizer"]["file"])))
        self.ids = SpeechSpecialIds.from_dict(m["special_ids"])
        self.text_embeddings = EmbeddingTable(m.path(m["embeddings"]["text"]["file"]), m["embeddings"]["text"]["dtype"])
        self.audio_embeddings = EmbeddingTable(m.path(m["embeddings"]["audio"]["file"]),
                                               m["embeddings"]["audio"]["dtype"])
        self._codebook_offsets = np.array(self.audio_layout["codebook_offsets"]) + self.audio_layout["n_specials"]
        self._voices: dict[str, np.ndarray] = {}
        self._kv: list[ort.OrtValue] | None = None
        self._lock = threading.Lock()

    @classmethod
    def open(cls, bundle: str | Path, *, threads: int | None = None, max_context: int | None = None,
             verify: bool = True) -> "Synthesizer":
        """Check the bundle against its manifest (sha256 of every file unless verify=False; sizes always),
        then build one onnxruntime session per graph."""
        return cls(Manifest.load(bundle, verify=verify), threads=threads, max_context=max_context)

    # -- inputs ----------------------------------------------------------------------------------
    @property
    def voices(self) -> dict[str, int]:
        """Preset voice names and their [AUDIO] token counts."""
        return {name: v["tokens"] for name, v in self.manifest["voices"].items()}

    def voice(self, name: str) -> np.ndarray:
        if name not in self.manifest["voices"]:
            raise VoxtralEdgeError(f"unknown voice {name!r}; this bundle has: {', '.join(sorted(self.voices))}")
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

    # -- the graphs --------------------------------------------------------------------------------
    def _kv_cache(self) -> list[ort.OrtValue]:
        """The KV buffers, allocated once, bound as both past and present of every layer."""
        if self._kv is None:
            b = self.manifest["model"]["backbone"]
            shape = (1, b["n_kv_heads"], self.max_context, b["head_dim"])
            self._kv = [ort.OrtValue.ortvalue_from_numpy(np.zeros(shape, f32)) for _ in range(2 * b["n_layers"])]
            self._io = self.sessions["backbone_step"].io_binding()
            for i in range(b["n_layers"]):
                for j, kind in enumerate(("key", "value")):
                    self._io.bind_ortvalue_input(f"past_{kind}_{i}", self._kv[2 * i + j])
                    self._io.bind_ortvalue_output(f"present_{kind}_{i}", self._kv[2 * i + j])
        return self._kv

    def backbone(self, x: np.ndarray, past_length: int) -> tuple[np.ndarray, np.ndarray]:
        """Run x [T, dim] at positions past_length.. ; returns (hidden states [T, dim], semantic logits of
        the last position). The cache keeps everything before past_length."""
        if past_length + len(x) > self.max_context:
            raise VoxtralEdgeError(f"context full: {past_length + len(x)} positions needed, max_context is "
                                   f"{self.max_context}")
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

    def acoustic_codes(self, h: np.ndarray, noise: np.ndarray, steps: int, cfg_alpha: float) -> np.ndarray:
        """Euler integration of the flow head from noise (t = 0) to t = 1 with classifier-free guidance;
        returns codes 0..levels-1."""
        x = np.asarray(noise, dtype=f32).copy()
        timesteps = np.linspace(0, 1, steps + 1, dtype=f32)
        guided = cfg_alpha != 1  # with alpha 1 the unconditional row has weight 0: skip it
        h_batch = (np.stack([h, np.zeros_like(h)]) if guided else h[None]).astype(f32)
        flow = self.sessions["flow_head"]
        for k in range(steps):
            rows = flow.run(["velocity"], {"x": np.stack([x] * len(h_batch)), "t": timesteps[k:k + 1],
                                           "h": h_batch})[0]
            v = f32(cfg_alpha) * rows[0] + f32(1 - cfg_alpha) * rows[1] if guided else rows[0]
            x = x + v * (timesteps[k + 1] - timesteps[k])
        levels = self.audio_layout["acoustic_codebook_size"]
        return np.round((np.clip(x, -1, 1) + 1) / 2 * (levels - 1)).astype(np.int64)

    def audio_embedding(self, codes: np.ndarray) -> np.ndarray:
        """The next backbone input: the sum of one row per codebook (codes without specials)."""
        return self.audio_embeddings.rows(np.asarray(codes) + self._codebook_offsets).sum(axis=0)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """Codes [frames, n_codebooks] -> float32 audio, whole utterance."""
        codes = np.asarray(codes, dtype=np.int64)
        if len(codes) == 0:
            return np.zeros(0, dtype=f32)
        return self.sessions["codec_decoder"].run(["audio"], {"codes": codes})[0]

    # -- one utterance ---------------------------------------------------------------------------
    def synthesize(self, text: str, voice: str, *, seed: int | None = None, steps: int | None = None,
                   cfg_alpha: float = 1.2, max_frames: int | None = None, noise: np.ndarray | None = None) -> Result:
        """Speak `text` with a preset voice. Frame f's flow-matching noise is row f of `noise` when given,
        else drawn from `seed` (a random seed when None; the one used is in the result)."""
        with self._lock:
            return self._synthesize(text, voice, seed, steps, cfg_alpha, max_frames, noise)

    def _synthesize(self, text, voice, seed, steps, cfg_alpha, max_frames, noise) -> Result:
        layout = self.audio_layout
        n_acoustic = layout["n_acoustic_codebook"]
        steps = self.manifest["model"]["flow_head"]["n_decoding_steps"] if steps is None else int(steps)
        timings = dict.fromkeys(("tokenize_ms", "prefill_ms", "backbone_ms", "flow_ms", "codec_ms"), 0.0)
        clock = time.perf_counter
        start = clock()
        prompt = self.prompt(text, voice)
        x = self.prompt_embeddings(prompt, voice)
        timings["tokenize_ms"] = 1e3 * (clock() - start)
        room = self.max_context - len(prompt)
        if room < 1:
            raise VoxtralEdgeError(f"the prompt takes {len(prompt)} positions, max_context is {self.max_context}: "
                                   f"shorten the text")
        if noise is not None:
            noise = np.asarray(noise, dtype=f32)
            if noise.ndim != 2 or noise.shape[1] != n_acoustic:
                raise VoxtralEdgeError(f"noise must be float32 [frames, {n_acoustic}], found {list(noise.shape)}")
            max_frames = len(noise) if max_frames is None else max_frames
            if max_frames > len(noise):
                raise VoxtralEdgeError(f"max_frames {max_frames} needs {max_frames} rows of noise, found {len(noise)}")
            seed = None
        else:
            seed = secrets.randbits(63) if seed is None else int(seed)
            rng = np.random.default_rng(seed)
        max_frames = min(DEFAULT_MAX_FRAMES if max_frames is None else int(max_frames), room)

        t0 = clock()
        hidden, logits = self.backbone(x, 0)
        h = hidden[-1]
        timings["prefill_ms"] = 1e3 * (clock() - t0)
        position, frames, finished = len(prompt), [], False
        for f in range(max_frames):
            semantic = int(np.argmax(logits))
            if semantic == layout["end_audio"]:
                finished = True
                break
            t0 = clock()
            frame_noise = noise[f] if noise is not None else rng.standard_normal(n_acoustic, dtype=f32)
            frame = np.concatenate([[semantic - layout["n_specials"]],
                                    self.acoustic_codes(h, frame_noise, steps, cfg_alpha)])
            t1 = clock()
            timings["flow_ms"] += 1e3 * (t1 - t0)
            frames.append(frame)
            if f + 1 < max_frames:
                hidden, logits = self.backbone(self.audio_embedding(frame)[None], position)
                h = hidden[-1]
                position += 1
                timings["backbone_ms"] += 1e3 * (clock() - t1)
        codes = np.array(frames, dtype=np.int32).reshape(-1, layout["num_codebooks"])
        t0 = clock()
        audio = self.decode(codes)
        timings["codec_ms"] = 1e3 * (clock() - t0)
        timings["total_ms"] = 1e3 * (clock() - start)
        timings["frames"] = float(len(codes))
        return Result(audio, codes, self.sample_rate, seed, len(prompt), finished, timings)
