"""How the runtime calls graphs exported in the NPU form (`export --plan w8a16|w4a16`; the graphs are
described in `voxtral_edge.export.htp_graphs`). Their shapes are static, so each call has a fixed size and
the host does what a fixed-size graph cannot:

    HtpBackbone   T rows per call: a prompt goes in chunks of T (a decode step fills row 0); the host builds
                  the rotary factors and the attention mask, and writes the new keys and values the graph
                  returns into its cache: one array per layer and kind, [1, kv_heads, P, head_dim], uint16
                  when the bundle quantized the cache (then the rows are copied as they are, bit for bit)
    HtpFlow       a frame in one call at the compiled number of Euler steps, both guidance rows always; the
                  host rounds the latent to codes (the reference's formula)
    HtpCodec      K frames per call; fewer frames (the first chunk, a piece's end) are decoded padded and
                  their state not kept, then decoded again with the frames that follow: the codec is causal,
                  so the audio of the frames already heard does not change

The graph entry of each such graph in the manifest has an "htp" record with these sizes; everything here
follows it. Sessions come from `voxtral_edge.sessions` like any other graph's.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from .errors import UsageError, VoxtralEdgeError

f32 = np.float32


def is_htp(manifest, graph: str) -> bool:
    """Whether the bundle's `graph` is in the NPU form."""
    return "htp" in manifest["graphs"][graph]


def rope_factors(positions: np.ndarray, head_dim: int, theta: float) -> tuple[np.ndarray, np.ndarray]:
    """cos and signed sin [1, T, 1, head_dim] of rotary embedding in the halves form the graph uses:
    x * cos + [x2, x1] * sin, so sin is [-sin, sin] (angles in float64, as the CPU graph's tables)."""
    freqs = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    angles = np.asarray(positions, dtype=np.float64)[:, None] * freqs[None, :]
    cos, sin = np.cos(angles).astype(f32), np.sin(angles).astype(f32)
    return (np.concatenate([cos, cos], axis=1)[None, :, None, :],
            np.concatenate([-sin, sin], axis=1)[None, :, None, :])


class HtpBackbone:
    """The backbone graph in the NPU form and the KV cache it reads (see the module docstring)."""

    def __init__(self, session: ort.InferenceSession, manifest, max_context: int):
        self.session = session
        graph = manifest["graphs"]["backbone_step"]
        spec, b = graph["htp"], manifest["model"]["backbone"]
        self.rows, self.positions = int(spec["rows"]), int(spec["positions"])
        self.theta, self.mask = float(spec["rope_theta"]), float(spec["mask"])
        self.first_id, self.stop_id = spec["semantic_ids"]
        self.n_logits = int(spec["logits"])  # as the CPU graph's semantic_logits: padding at -inf
        self.head_dim, self.dim, self.layers = b["head_dim"], b["dim"], b["n_layers"]
        if max_context > self.positions:
            raise VoxtralEdgeError(f"max_context {max_context}: this bundle's backbone is compiled for "
                                   f"{self.positions} positions")
        self.names = [f"past_{kind}_{i}" for i in range(self.layers) for kind in ("key", "value")]
        self.outputs = [o.name for o in session.get_outputs()]
        shape = (1, b["n_kv_heads"], self.positions, self.head_dim)
        self.arrays = []
        for name in self.names:  # the cache starts at 0.0: the zero point of a quantized one
            dtype = np.dtype(graph["inputs"][name]["dtype"])
            zero = spec.get("kv_zero_points", {}).get(name, 0)
            self.arrays.append(np.full(shape, zero, dtype=dtype))

    def run(self, x: np.ndarray, past_length: int) -> tuple[np.ndarray, np.ndarray]:
        """x [n, dim] at positions past_length.. -> (hidden states [n, dim], semantic logits of the last
        position [n_logits] as the CPU graph gives them, -inf for the ids greedy decoding may not pick)."""
        T, P = self.rows, self.positions
        hidden, logits = [], None
        for start in range(0, len(x), T):
            rows = np.asarray(x[start:start + T], dtype=f32)
            n = len(rows)
            position = past_length + start
            feed = np.zeros((1, T, self.dim), f32)
            feed[0, :n] = rows
            cos, sin = rope_factors(np.arange(position, position + T), self.head_dim, self.theta)
            bias = np.full((1, 1, T, P + T), self.mask, f32)
            bias[..., :position] = 0  # the cached positions
            bias[0, 0, :, P:] = np.where(np.tril(np.ones((T, T), bool)), 0, self.mask)  # causal among the new rows
            out = self.session.run(self.outputs, {"inputs_embeds": feed, "rope_cos": cos, "rope_sin": sin,
                                                  "attention_bias": bias, **dict(zip(self.names, self.arrays))})
            result = dict(zip(self.outputs, out))
            for name, cache in zip(self.names, self.arrays):  # the new rows, in place
                cache[:, :, position:position + n] = result["new" + name[len("past"):]][:, :, :n]
            hidden.append(result["hidden_states"][0, :n])
            logits = result["semantic_logits"][0, n - 1]
        full = np.full(self.n_logits, -np.inf, f32)
        full[self.first_id:self.stop_id] = logits
        return np.concatenate(hidden), full


class HtpFlow:
    """The flow head in the NPU form: a frame's latent at the compiled number of steps, rounded here."""

    def __init__(self, session: ort.InferenceSession, manifest):
        self.session = session
        self.steps = int(manifest["graphs"]["flow_head"]["htp"]["steps"])
        self.levels = int(manifest["audio"]["acoustic_codebook_size"])

    def run(self, h: np.ndarray, noise: np.ndarray, steps: int, cfg_alpha: float) -> tuple[np.ndarray, np.ndarray]:
        """(codes [1, n_acoustic], latent [1, n_acoustic]) of one frame."""
        if steps != self.steps:
            raise UsageError(f"steps {steps}: this bundle's flow head is compiled for {self.steps} Euler steps "
                             f"(re-export with --steps {steps})")
        latent = self.session.run(["latent"], {
            "noise": np.asarray(noise, f32).reshape(1, -1), "h": np.asarray(h, f32).reshape(1, -1),
            "cfg_weights": np.array([[cfg_alpha], [1 - cfg_alpha]], f32)})[0]
        codes = np.round((np.clip(latent, -1, 1) + 1) / 2 * (self.levels - 1)).astype(np.int64)
        return codes, latent


class HtpCodec:
    """The codec's carried state in the NPU form (the CodecStream of a K-frame graph): feed frames in order,
    get their audio."""

    def __init__(self, session: ort.InferenceSession, manifest):
        self.session = session
        graph = manifest["graphs"]["codec_decoder"]
        self.chunk = int(graph["htp"]["frames"])
        self.samples_per_frame = int(manifest["audio"]["samples_per_frame"])
        self.state = {name: np.zeros(spec["shape"], np.dtype(spec["dtype"])) for name, spec in graph["inputs"].items()
                      if name not in ("codes", "frames_done")}
        self.outputs = ["audio"] + [f"next_{name}" for name in self.state]
        self.frames = 0  # frames whose state is kept
        self.carry = np.zeros((0, manifest["audio"]["num_codebooks"]), np.int32)  # frames heard, not yet kept

    def _run(self, codes: np.ndarray, keep: bool) -> np.ndarray:
        out = self.session.run(self.outputs, {"codes": codes, "frames_done": np.array([self.frames], f32),
                                              **self.state})
        if keep:
            self.state = dict(zip(self.state, out[1:]))
            self.frames += len(codes)
        return out[0]

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """Audio of the next frames' codes [n, n_codebooks] (n >= 1)."""
        K, spf = self.chunk, self.samples_per_frame
        frames = np.concatenate([self.carry, np.asarray(codes, np.int32)])
        heard = len(self.carry)
        parts = []
        while len(frames) >= K:
            parts.append(self._run(frames[:K], keep=True)[heard * spf:])
            frames, heard = frames[K:], 0
        if len(frames):  # padded with copies of its last frame; this state is not kept
            padded = np.concatenate([frames, np.repeat(frames[-1:], K - len(frames), axis=0)])
            parts.append(self._run(padded, keep=False)[heard * spf:len(frames) * spf])
        self.carry = frames
        return np.concatenate(parts) if parts else np.zeros(0, f32)
