"""The whole model in plain numpy, read straight from a checkpoint: the oracle for every graph.

Literal rather than fast. All math is float32 on weights widened from BF16. Names follow the
checkpoint (`wq`, `w1`, `attention_norm`) and the reference server (vLLM-Omni's voxtral_tts):

    prompt ids -> embeddings (voice rows at the [AUDIO] run) -> backbone prefill -> h
    per frame:  semantic_code(h)          greedy, [EMPTY_AUDIO] and padding masked; [END_AUDIO] stops
                acoustic_codes(h, noise)  Euler flow matching with classifier-free guidance
                audio_embedding(codes)    sum of one row per codebook -> next backbone input
    codes -> decode() -> waveform
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..defaults import CFG_ALPHA
from .checkpoint import Checkpoint
from .config import END_AUDIO, EMPTY_AUDIO, N_AUDIO_SPECIALS, ModelConfig

f32 = np.float32


# -- building blocks ---------------------------------------------------------------------------
def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + f32(eps)) * weight


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1 + np.exp(-x))


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - np.max(x, axis=-1, keepdims=True))
    return e / np.sum(e, axis=-1, keepdims=True)


def rope(x: np.ndarray, positions: np.ndarray, theta: float) -> np.ndarray:
    """Rotary embedding on interleaved pairs (x[2i], x[2i+1]), Mistral style. x: [T, heads, head_dim]."""
    head_dim = x.shape[-1]
    freqs = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    angles = positions.astype(np.float64)[:, None] * freqs[None, :]
    cos, sin = np.cos(angles).astype(f32)[:, None, :], np.sin(angles).astype(f32)[:, None, :]
    even, odd = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = even * cos - odd * sin
    out[..., 1::2] = even * sin + odd * cos
    return out


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """Scaled dot-product attention with grouped KV heads. q [Tq, H, D], k/v [Tk, Hkv, D],
    bias broadcastable to [H, Tq, Tk] (-inf masks). Query head h reads KV head h // (H / Hkv)."""
    group = q.shape[1] // k.shape[1]
    k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)
    scores = np.einsum("qhd,khd->hqk", q, k) / f32(math.sqrt(q.shape[-1]))
    if bias is not None:
        scores = scores + bias
    return np.einsum("hqk,khd->qhd", softmax(scores), v).reshape(q.shape[0], -1)


def alibi_slopes(n_heads: int) -> np.ndarray:
    """The codec's ALiBi slopes r^0, r^1, ... with r = 2^(-8/n) (note: the first slope is 1)."""
    def power_of_2(n: int) -> list[float]:
        r = 2.0 ** (-8.0 / n)
        return [r ** i for i in range(n)]

    if math.log2(n_heads).is_integer():
        return np.array(power_of_2(n_heads), dtype=f32)
    m = 2 ** math.floor(math.log2(n_heads))
    return np.array(power_of_2(m) + power_of_2(2 * m)[::2][: n_heads - m], dtype=f32)


def weight_norm(g: np.ndarray, v: np.ndarray) -> np.ndarray:
    """torch weight_norm (dim=0): each slice along v's first axis gets norm g."""
    return g * v / np.sqrt(np.sum(v * v, axis=tuple(range(1, v.ndim)), keepdims=True))


def pad1d(x: np.ndarray, left: int, right: int, mode: str) -> np.ndarray:
    """Pad the last axis; 'reflect' on an input shorter than the pad first appends zeros (as the
    reference server's pad1d does), 'replicate' repeats the edge value."""
    if mode == "reflect":
        extra = max(left, right) - x.shape[-1] + 1 if x.shape[-1] <= max(left, right) else 0
        x = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, extra)])
        padded = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(left, right)], mode="reflect")
        return padded[..., : padded.shape[-1] - extra]
    return np.pad(x, [(0, 0)] * (x.ndim - 1) + [(left, right)], mode="edge")


def causal_conv1d(x: np.ndarray, w: np.ndarray, stride: int, pad_mode: str) -> np.ndarray:
    """x [C_in, L], w [C_out, C_in, K]: left padding K - stride (plus what makes the last stride whole)."""
    kernel = w.shape[-1]
    pad = kernel - stride
    frames = (x.shape[-1] - kernel + pad) / stride + 1
    extra = (math.ceil(frames) - 1) * stride + (kernel - pad) - x.shape[-1]
    x = pad1d(x, pad, extra, pad_mode)
    n_out = (x.shape[-1] - kernel) // stride + 1
    windows = np.stack([x[:, k: k + stride * (n_out - 1) + 1: stride] for k in range(kernel)], axis=-1)
    return np.einsum("ctk,ock->ot", windows, w)


def causal_conv_transpose1d(x: np.ndarray, w: np.ndarray, stride: int) -> np.ndarray:
    """x [C_in, L], w [C_in, C_out, K]; the K - stride trailing samples (which need the future) are cut."""
    kernel, length = w.shape[-1], x.shape[-1]
    out = np.zeros((w.shape[1], (length - 1) * stride + kernel), dtype=f32)
    for k in range(kernel):
        out[:, k: k + (length - 1) * stride + 1: stride] += w[:, :, k].T @ x
    return out[:, : out.shape[-1] - (kernel - stride)]


def time_embedding(t: float, dim: int) -> np.ndarray:
    """cat(cos(t f), sin(t f)) with f_i = exp(-ln(10000) i / (dim/2))."""
    freqs = np.exp(-math.log(10000.0) * np.arange(dim // 2, dtype=f32) / (dim // 2))
    return np.concatenate([np.cos(f32(t) * freqs), np.sin(f32(t) * freqs)]).astype(f32)


# -- the model --------------------------------------------------------------------------------
@dataclass
class KVCache:
    """Keys and values of every backbone layer, one row per position seen so far."""

    keys: list[np.ndarray] = field(default_factory=list)
    values: list[np.ndarray] = field(default_factory=list)

    @property
    def length(self) -> int:
        return self.keys[0].shape[0] if self.keys else 0


class Reference:
    """The model on one checkpoint. Weights are read (as float32) on first use and kept."""

    def __init__(self, checkpoint: Checkpoint):
        self.checkpoint = checkpoint
        self.config: ModelConfig = checkpoint.config
        self._weights: dict[str, np.ndarray] = {}

    def w(self, name: str) -> np.ndarray:
        if name not in self._weights:
            self._weights[name] = self.checkpoint.tensor(name)
        return self._weights[name]

    # shared by the three transformers
    def _feed_forward(self, prefix: str, x: np.ndarray) -> np.ndarray:
        return (silu(x @ self.w(f"{prefix}.feed_forward.w1.weight").T) * (x @ self.w(f"{prefix}.feed_forward.w3.weight").T)
                ) @ self.w(f"{prefix}.feed_forward.w2.weight").T

    def _qkv(self, prefix: str, x: np.ndarray):
        q = x @ self.w(f"{prefix}.attention.wq.weight").T
        k = x @ self.w(f"{prefix}.attention.wk.weight").T
        v = x @ self.w(f"{prefix}.attention.wv.weight").T
        return q, k, v

    @staticmethod
    def _heads(x: np.ndarray, n_heads: int, head_dim: int) -> np.ndarray:
        return x.reshape(x.shape[0], n_heads, head_dim)

    # backbone ------------------------------------------------------------------------------
    def embed_prompt(self, ids: list[int], voice: np.ndarray) -> np.ndarray:
        """Token embeddings of the prompt with the voice's rows over its [AUDIO] run."""
        ids = np.asarray(ids)
        x = self.w("mm_audio_embeddings.tok_embeddings.weight")[ids].copy()
        audio = np.flatnonzero(ids == self.config.audio.audio_token_id)
        if len(audio) != len(voice):
            raise ValueError(f"prompt has {len(audio)} [AUDIO] positions but the voice has {len(voice)} rows")
        x[audio] = voice
        return x

    def backbone(self, x: np.ndarray, cache: KVCache) -> np.ndarray:
        """Run T new positions (after cache.length earlier ones); returns the hidden states after
        the final norm [T, dim] and extends the cache."""
        b = self.config.backbone
        start = cache.length
        positions = np.arange(start, start + x.shape[0])
        causal = np.where(np.arange(start + x.shape[0])[None, :] > positions[:, None], -np.inf, 0).astype(f32)
        for i in range(b.n_layers):
            p = f"layers.{i}"
            q, k, v = self._qkv(p, rms_norm(x, self.w(f"{p}.attention_norm.weight"), b.norm_eps))
            q = rope(self._heads(q, b.n_heads, b.head_dim), positions, b.rope_theta)
            k = rope(self._heads(k, b.n_kv_heads, b.head_dim), positions, b.rope_theta)
            v = self._heads(v, b.n_kv_heads, b.head_dim)
            if len(cache.keys) <= i:
                cache.keys.append(k)
                cache.values.append(v)
            else:
                cache.keys[i] = np.concatenate([cache.keys[i], k])
                cache.values[i] = np.concatenate([cache.values[i], v])
            x = x + attention(q, cache.keys[i], cache.values[i], causal) @ self.w(f"{p}.attention.wo.weight").T
            x = x + self._feed_forward(p, rms_norm(x, self.w(f"{p}.ffn_norm.weight"), b.norm_eps))
        return rms_norm(x, self.w("norm.weight"), b.norm_eps)

    # one frame ------------------------------------------------------------------------------
    def semantic_logits(self, h: np.ndarray) -> np.ndarray:
        """Logits over the semantic codebook with specials (id = code + 2); EMPTY_AUDIO and padding are -inf."""
        logits = h @ self.w("acoustic_transformer.semantic_codebook_output.weight").T
        logits[..., EMPTY_AUDIO] = -np.inf
        logits[..., N_AUDIO_SPECIALS + self.config.audio.semantic_codebook_size:] = -np.inf
        return logits

    def semantic_code(self, h: np.ndarray) -> int:
        """Greedy semantic id (with specials): END_AUDIO (1) ends the utterance."""
        return int(np.argmax(self.semantic_logits(h)))

    def velocity(self, x: np.ndarray, t: float, h: np.ndarray) -> np.ndarray:
        """One flow-head evaluation: x [B, n_acoustic], t, h [B, dim] -> v [B, n_acoustic]."""
        f = self.config.flow_head
        p = "acoustic_transformer"
        tokens = np.stack([
            x @ self.w(f"{p}.input_projection.weight").T,
            np.broadcast_to(time_embedding(t, f.dim) @ self.w(f"{p}.time_projection.weight").T, (len(x), f.dim)),
            h @ self.w(f"{p}.llm_projection.weight").T,
        ], axis=1)  # [B, 3, dim]
        out = []
        for seq in tokens:  # each row's 3 tokens attend to each other (no mask, no positions)
            for j in range(f.n_layers):
                lp = f"{p}.layers.{j}"
                q, k, v = self._qkv(lp, rms_norm(seq, self.w(f"{lp}.attention_norm.weight"), f.norm_eps))
                seq = seq + attention(self._heads(q, f.n_heads, f.head_dim), self._heads(k, f.n_kv_heads, f.head_dim),
                                      self._heads(v, f.n_kv_heads, f.head_dim)) @ self.w(f"{lp}.attention.wo.weight").T
                seq = seq + self._feed_forward(lp, rms_norm(seq, self.w(f"{lp}.ffn_norm.weight"), f.norm_eps))
            out.append(rms_norm(seq, self.w(f"{p}.norm.weight"), f.norm_eps)[0])
        return np.stack(out) @ self.w(f"{p}.acoustic_codebook_output.weight").T

    def acoustic_codes(self, h: np.ndarray, noise: np.ndarray, steps: int, cfg_alpha: float) -> np.ndarray:
        """Euler integration from noise (t = 0) to t = 1 with guidance, then quantized to 0..levels-1."""
        x = np.asarray(noise, dtype=f32).copy()
        timesteps = np.linspace(0, 1, steps + 1, dtype=f32)
        for k in range(steps):
            v_cond, v_uncond = self.velocity(np.stack([x, x]), float(timesteps[k]), np.stack([h, np.zeros_like(h)]))
            v = f32(cfg_alpha) * v_cond + f32(1 - cfg_alpha) * v_uncond
            x = x + v * (timesteps[k + 1] - timesteps[k])
        levels = self.config.audio.acoustic_codebook_size
        return np.round((np.clip(x, -1, 1) + 1) / 2 * (levels - 1)).astype(np.int64)

    def audio_embedding(self, codes: np.ndarray) -> np.ndarray:
        """Next backbone input for one frame: the sum of one row per codebook (codes without specials)."""
        ids = np.asarray(codes) + N_AUDIO_SPECIALS + np.asarray(self.config.audio.codebook_offsets)
        return self.w("mm_audio_embeddings.audio_codebook_embeddings.embeddings.weight")[ids].sum(axis=0)

    # codec ----------------------------------------------------------------------------------
    def _codec_transformer(self, prefix: str, x: np.ndarray, n_layers: int, window: int) -> np.ndarray:
        c = self.config.codec
        t = x.shape[0]
        rel = np.arange(t)[None, :] - np.arange(t)[:, None]  # j - i
        bias = alibi_slopes(c.n_heads)[:, None, None] * rel[None].astype(f32)
        bias = np.where((rel > 0) | (rel < -window), -np.inf, bias).astype(f32)
        for k in range(n_layers):
            p = f"{prefix}.layers.{k}"
            q, kk, v = self._qkv(p, rms_norm(x, self.w(f"{p}.attention_norm.weight"), c.norm_eps))
            q = rms_norm(q, self.w(f"{p}.attention.q_norm.weight"), c.qk_norm_eps)
            kk = rms_norm(kk, self.w(f"{p}.attention.k_norm.weight"), c.qk_norm_eps)
            r = attention(self._heads(q, c.n_heads, c.head_dim), self._heads(kk, c.n_kv_heads, c.head_dim),
                          self._heads(v, c.n_kv_heads, c.head_dim), bias) @ self.w(f"{p}.attention.wo.weight").T
            x = x + self.w(f"{p}.attention_scale") * r
            r = self._feed_forward(p, rms_norm(x, self.w(f"{p}.ffn_norm.weight"), c.norm_eps))
            x = x + self.w(f"{p}.ffn_scale") * r
        return x

    def _conv_weight(self, prefix: str) -> np.ndarray:
        return weight_norm(self.w(f"{prefix}.conv.parametrizations.weight.original0"),
                           self.w(f"{prefix}.conv.parametrizations.weight.original1"))

    def codec_input(self, codes: np.ndarray) -> np.ndarray:
        """[F, n_codebooks] codes -> [latent, F]: semantic embedding rows and acoustic values in [-1, 1]."""
        q = "audio_tokenizer.quantizer.semantic_codebook"
        table = self.w(f"{q}.embedding_sum") / np.maximum(self.w(f"{q}.cluster_usage"), f32(1e-5))[:, None]
        levels = self.config.audio.acoustic_codebook_size
        acoustic = codes[:, 1:].astype(f32) * 2 / (levels - 1) - 1
        return np.concatenate([table[codes[:, 0]], acoustic], axis=1).T

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """Whole-utterance codec decode: [F, n_codebooks] codes (no specials) -> [F * samples_per_frame]."""
        c = self.config.codec
        codes = np.asarray(codes, dtype=np.int64).reshape(-1, self.config.audio.num_codebooks)
        if len(codes) == 0:
            return np.zeros(0, dtype=f32)
        x = self.codec_input(codes)  # channels first [C, T]
        for block in c.blocks:
            prefix = f"audio_tokenizer.decoder_blocks.{block.index}"
            if block.kind == "conv":
                x = causal_conv1d(x, self._conv_weight(prefix), block.stride, "replicate")
            elif block.kind == "conv_transpose":
                x = causal_conv_transpose1d(x, self._conv_weight(prefix), block.stride)
            else:
                x = self._codec_transformer(prefix, x.T, block.n_layers, block.window).T
        x = causal_conv1d(x, self._conv_weight("audio_tokenizer.output_proj"), 1, "reflect")  # [patch, T]
        return np.ascontiguousarray(x.T).reshape(-1)  # each position's channels are consecutive samples

    # the whole utterance ----------------------------------------------------------------------
    def generate(self, prompt: list[int], voice: np.ndarray, noise: np.ndarray, steps: int, cfg_alpha: float,
                 max_frames: int | None = None) -> np.ndarray:
        """Frames of codes [frames, n_codebooks] (without specials) until END_AUDIO or max_frames.
        Row f of `noise` is frame f's initial flow-matching noise."""
        noise = np.asarray(noise, dtype=f32)
        n_ac = self.config.audio.n_acoustic_codebook
        if noise.ndim != 2 or noise.shape[1] != n_ac:
            raise ValueError(f"noise must be [frames, {n_ac}], found {list(noise.shape)}")
        max_frames = len(noise) if max_frames is None else max_frames
        if max_frames > len(noise):
            raise ValueError(f"max_frames {max_frames} needs {max_frames} rows of noise, found {len(noise)}")
        cache = KVCache()
        h = self.backbone(self.embed_prompt(prompt, voice), cache)[-1]
        frames = []
        for f in range(max_frames):
            semantic = self.semantic_code(h)
            if semantic == END_AUDIO:
                break
            frame = np.concatenate([[semantic - N_AUDIO_SPECIALS], self.acoustic_codes(h, noise[f], steps, cfg_alpha)])
            frames.append(frame)
            if f + 1 < max_frames:
                h = self.backbone(self.audio_embedding(frame)[None], cache)[-1]
        return np.array(frames, dtype=np.int64).reshape(-1, self.config.audio.num_codebooks)

    def synthesize(self, text: str, voice: str, noise: np.ndarray, steps: int | None = None,
                   cfg_alpha: float = CFG_ALPHA, max_frames: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Text and a preset voice -> (codes [frames, n_codebooks] without specials, float32 audio)."""
        from ..prompt import tekken_speech_prompt

        prompt = tekken_speech_prompt(self.checkpoint.tekken, text, voice)
        steps = self.config.flow_head.n_decoding_steps if steps is None else steps
        codes = self.generate(prompt, self.checkpoint.voice(voice), noise, steps, cfg_alpha, max_frames)
        return codes, self.decode(codes)
