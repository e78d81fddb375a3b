"""The three graphs in the form Qualcomm's Hexagon NPU (HTP, through onnxruntime's QNN execution provider)
can run whole: static shapes, plain operators, no -inf, no Loop, no int64 inputs. Built from checkpoint
tensors like `graphs.py`, in float32; `voxtral_edge.quant.htp` then quantizes them (QDQ, 16-bit
activations) with calibration recorded from these very graphs.

backbone_step  inputs_embeds [1, T, dim], rope_cos / rope_sin [1, T, 1, head_dim] (the T positions'
               rotary factors, from the host), attention_bias [1, 1, T, P + T] (0 where a query may look,
               MASK elsewhere), past_key_i / past_value_i [1, kv_heads, P, head_dim] (the whole cache)
               -> hidden_states [1, T, dim], semantic_logits [1, T, 1 + codebook] (END_AUDIO then the
               codes: the ids greedy decoding may pick), new_key_i / new_value_i [1, kv_heads, T, head_dim]
               (the host writes them into its cache at the T positions). T rows per call (prefill in
               chunks of T, a decode step uses row 0), P cache positions.
flow_head      noise [1, n_acoustic], h [1, dim], cfg_weights [2, 1] ([alpha, 1 - alpha]) -> latent
               [1, n_acoustic]: `steps` Euler steps unrolled, both guidance rows always computed, the time
               tokens constants (they depend on the fixed t_k only); the host rounds the latent to codes.
codec_decoder  codes [K, n_codebooks] (int32), frames_done [1] (float) and the carried state -> audio
               [K * samples_per_frame] and next_<state>: K frames per call; the first-chunk paddings and
               the empty attention slots are chosen arithmetically from frames_done.

Exact rewrites of the CPU graphs' math (checked against the numpy reference in the tests): q and k rows
of each head reordered from interleaved pairs to halves (q.k is unchanged, rotary becomes
x * cos + [x2, x1] * [-sin, sin]); 1 / sqrt(head_dim) folded into wq (codec: into q_norm); heads grouped
per KV head by a reshape instead of repeating keys; masks finite (MASK), which 16-bit activations can
represent next to real scores.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import numpy as np
from onnx import TensorProto

from .config import END_AUDIO, N_AUDIO_SPECIALS, ModelConfig
from .graphs import FLOAT, GraphFile, _Graph, codec_state, time_frequencies
from .reference import alibi_slopes, weight_norm

INT32 = TensorProto.INT32
# A finite "minus infinity" for attention masks: exp(-64) = 1.6e-28 is nothing next to a real score, and a
# 16-bit quantized range of [-64 - s, s] keeps a resolution of about 0.002.
MASK = -64.0


class _HtpGraph(_Graph):
    """_Graph with the few layers the HTP forms build differently; weights written once and shared."""

    def __init__(self, name: str, path: Path, tensor: Callable[[str], np.ndarray]):
        super().__init__(name, path, tensor)
        self._shared: dict[str, str] = {}

    def i64(self, *values: int) -> str:
        return self.const(list(values), np.int64)

    def shared(self, key: str, make: Callable[[], np.ndarray]) -> str:
        """One initializer per `key`, however many nodes read it (the unrolled Euler steps)."""
        if key not in self._shared:
            self._shared[key] = self.weight(key.replace("/", "_"), np.ascontiguousarray(make(), dtype=np.float32))
        return self._shared[key]

    def matmul(self, x: str, weight_kn: np.ndarray | str, name: str, outputs: list[str] | None = None) -> str:
        """x @ weight, the weight [in, out] (an array, written here, or an initializer's name)."""
        w = weight_kn if isinstance(weight_kn, str) else self.weight(name, np.ascontiguousarray(weight_kn, np.float32))
        return self.op("MatMul", [x, w], name=name, outputs=outputs)

    def norm(self, x: str, weight: np.ndarray | str, eps: float) -> str:
        w = weight if isinstance(weight, str) else self.weight("norm_weight", np.asarray(weight, np.float32))
        return self.op("RMSNormalization", [x, w], axis=-1, epsilon=float(eps), name="rms_norm")

    def swiglu(self, x: str, w1_w3: np.ndarray | str, hidden: int, w2: np.ndarray | str) -> str:
        gate, up = self.op("Split", [self.matmul(x, w1_w3, "w1_w3"), self.const([hidden, hidden], np.int64)], 2,
                           axis=-1)
        return self.matmul(self.op("Mul", [self.op("Mul", [gate, self.op("Sigmoid", [gate])], name="silu"), up]),
                           w2, "w2")

    def heads(self, x: str, batch: int, rows: int, n: int, head_dim: int) -> str:
        """[B, S, n * d] -> [B, n, S, d]."""
        return self.op("Transpose", [self.op("Reshape", [x, self.i64(batch, rows, n, head_dim)])], perm=[0, 2, 1, 3])

    def grouped_attention(self, q: str, k: str, v: str, batch: int, n_heads: int, n_kv: int, head_dim: int,
                          rows: int, keys: int, bias: str | None = None) -> str:
        """softmax(q k^T + bias) v for q [B, H, rows, d] (already scaled), k and v [B, Hkv, keys, d]
        -> [B, rows, H * d]. Query head h reads KV head h // (H / Hkv): the query heads of one KV head are
        consecutive, so a reshape to [B, Hkv, group * rows, d] pairs them with it; everything stays 4-D."""
        group = n_heads // n_kv
        scores = self.op("MatMul", [self.op("Reshape", [q, self.i64(batch, n_kv, group * rows, head_dim)]),
                                    self.op("Transpose", [k], perm=[0, 1, 3, 2])], name="scores")
        if bias is not None:
            scores = self.op("Add", [self.op("Reshape", [scores, self.i64(batch, n_heads, rows, keys)]), bias],
                             name="masked")
            scores = self.op("Reshape", [self.op("Softmax", [scores], axis=-1),
                                         self.i64(batch, n_kv, group * rows, keys)])
        else:
            scores = self.op("Softmax", [scores], axis=-1)
        out = self.op("MatMul", [scores, v])  # [B, Hkv, group * rows, d]
        out = self.op("Transpose", [self.op("Reshape", [out, self.i64(batch, n_heads, rows, head_dim)])],
                      perm=[0, 2, 1, 3])
        return self.op("Reshape", [out, self.i64(batch, rows, n_heads * head_dim)])


def half_split(w: np.ndarray, n_heads: int, head_dim: int) -> np.ndarray:
    """Reorder each head's output rows of w [n_heads * head_dim, in] from interleaved pairs
    (x0, x1), (x2, x3), ... to halves (x0, x2, ..., x1, x3, ...)."""
    order = np.concatenate([np.arange(0, head_dim, 2), np.arange(1, head_dim, 2)])
    return w.reshape(n_heads, head_dim, -1)[:, order].reshape(n_heads * head_dim, -1)


def semantic_rows(config: ModelConfig) -> tuple[int, int]:
    """The semantic head rows the HTP graph keeps: ids END_AUDIO .. N_AUDIO_SPECIALS + codebook - 1."""
    return END_AUDIO, N_AUDIO_SPECIALS + config.audio.semantic_codebook_size


def build_backbone_htp(config: ModelConfig, tensor: Callable[[str], np.ndarray], path: Path, rows: int,
                       positions: int, layers: range | None = None) -> GraphFile:
    """The backbone in the NPU form; `layers` builds only those (a part: `hidden_in` [1, T, dim] in unless it
    starts at layer 0, `hidden_out` out, the residual stream, unless it ends at the last; see
    benchmarks/npu_compile.py, which compiles the full-size backbone in parts)."""
    b = config.backbone
    hd, H, KV = b.head_dim, b.n_heads, b.n_kv_heads
    T, P = rows, positions
    layers = range(b.n_layers) if layers is None else layers
    first, last = layers[0] == 0, layers[-1] == b.n_layers - 1
    g = _HtpGraph("backbone_step", path, tensor)
    try:
        x = g.add_input("inputs_embeds" if first else "hidden_in", FLOAT, [1, T, b.dim])
        cos = g.add_input("rope_cos", FLOAT, [1, T, 1, hd])
        sin = g.add_input("rope_sin", FLOAT, [1, T, 1, hd])
        bias = g.add_input("attention_bias", FLOAT, [1, 1, T, P + T])
        scale = np.float32(1 / math.sqrt(hd))

        def rotary(t: str, n: int) -> str:  # [1, T, n * hd] -> [1, n, T, hd]
            t = g.op("Reshape", [t, g.i64(1, T, n, hd)])
            first_half, second_half = g.op("Split", [t, g.const([hd // 2, hd // 2], np.int64)], 2, axis=-1)
            swapped = g.op("Concat", [second_half, first_half], axis=-1)
            return g.op("Transpose", [g.op("Add", [g.op("Mul", [t, cos]), g.op("Mul", [swapped, sin])], name="rope")],
                        perm=[0, 2, 1, 3])

        for i in layers:
            p = f"layers.{i}"
            with g.scope(p):
                past_k = g.add_input(f"past_key_{i}", FLOAT, [1, KV, P, hd])
                past_v = g.add_input(f"past_value_{i}", FLOAT, [1, KV, P, hd])
                h = g.norm(x, tensor(f"{p}.attention_norm.weight"), b.norm_eps)
                wqkv = np.concatenate([half_split(tensor(f"{p}.attention.wq.weight"), H, hd) * scale,
                                       half_split(tensor(f"{p}.attention.wk.weight"), KV, hd),
                                       tensor(f"{p}.attention.wv.weight")])
                q, k, v = g.op("Split", [g.matmul(h, wqkv.T, "wqkv"), g.const([H * hd, KV * hd, KV * hd], np.int64)],
                               3, axis=-1)
                q, k = rotary(q, H), rotary(k, KV)
                v = g.heads(v, 1, T, KV, hd)
                g.op("Identity", [k], outputs=[g.add_output(f"new_key_{i}", FLOAT, [1, KV, T, hd])])
                g.op("Identity", [v], outputs=[g.add_output(f"new_value_{i}", FLOAT, [1, KV, T, hd])])
                attn = g.grouped_attention(q, g.op("Concat", [past_k, k], axis=2, name="keys"),
                                           g.op("Concat", [past_v, v], axis=2, name="values"), 1, H, KV, hd, T,
                                           P + T, bias)
                x = g.op("Add", [x, g.matmul(attn, tensor(f"{p}.attention.wo.weight").T, "wo")], name="residual")
                h = g.norm(x, tensor(f"{p}.ffn_norm.weight"), b.norm_eps)
                with g.scope("feed_forward"):
                    w1, w3 = tensor(f"{p}.feed_forward.w1.weight"), tensor(f"{p}.feed_forward.w3.weight")
                    ffn = g.swiglu(h, np.concatenate([w1, w3]).T, len(w1), tensor(f"{p}.feed_forward.w2.weight").T)
                out = [g.add_output("hidden_out", FLOAT, [1, T, b.dim])] if i == layers[-1] and not last else None
                x = g.op("Add", [x, ffn], name="residual", outputs=out)
        if last:
            hidden = g.op("RMSNormalization", [x, g.weight("norm_weight", tensor("norm.weight"))], axis=-1,
                          epsilon=float(b.norm_eps), outputs=[g.add_output("hidden_states", FLOAT, [1, T, b.dim])])
            first_id, stop = semantic_rows(config)
            with g.scope("semantic_head"):
                head = tensor("acoustic_transformer.semantic_codebook_output.weight")[first_id:stop]
                g.matmul(hidden, head.T, "logits",
                         outputs=[g.add_output("semantic_logits", FLOAT, [1, T, stop - first_id])])
        return g.finish()
    except BaseException:
        g.abort()
        raise


def build_flow_head_htp(config: ModelConfig, tensor: Callable[[str], np.ndarray], path: Path,
                        steps: int) -> GraphFile:
    f, a = config.flow_head, config.audio
    p = "acoustic_transformer"
    n_ac, dim, hd, H, KV = a.n_acoustic_codebook, f.dim, f.head_dim, f.n_heads, f.n_kv_heads
    g = _HtpGraph("flow_head", path, tensor)
    scale = np.float32(1 / math.sqrt(hd))

    def linear(x: str, name: str, scaled: bool = False) -> str:
        return g.matmul(x, g.shared(name, lambda: (tensor(name) * (scale if scaled else 1)).T), name.split(".")[-2])

    try:
        noise = g.add_input("noise", FLOAT, [1, n_ac])
        h = g.add_input("h", FLOAT, [1, config.backbone.dim])
        cfg_weights = g.add_input("cfg_weights", FLOAT, [2, 1])
        timesteps = np.linspace(0, 1, steps + 1, dtype=np.float32)
        with g.scope("frame"):  # the conditioning token, and the unconditional row's (llm_projection(0) = 0)
            cond = linear(h, f"{p}.llm_projection.weight")
            h_tokens = g.op("Reshape", [g.op("Concat", [cond, g.const(np.zeros((1, dim), np.float32), name="uncond")],
                                             axis=0), g.i64(2, 1, dim)], name="h_tokens")
        x = noise
        for k in range(steps):
            with g.scope(f"step_{k}"):
                angles = timesteps[k] * time_frequencies(dim)
                t_token = np.concatenate([np.cos(angles), np.sin(angles)]).astype(np.float32) @ \
                    tensor(f"{p}.time_projection.weight").T
                shared = g.op("Concat", [linear(x, f"{p}.input_projection.weight"),
                                         g.const(t_token[None].astype(np.float32), name="time_token")], axis=0)
                shared = g.op("Expand", [g.op("Reshape", [shared, g.i64(1, 2, dim)]), g.i64(2, 2, dim)])
                seq = g.op("Concat", [shared, h_tokens], axis=1, name="sequence")  # [2, 3, dim]: x, t, h
                for j in range(f.n_layers):
                    lp = f"{p}.layers.{j}"
                    with g.scope(f"layers.{j}"):
                        n = g.norm(seq, g.shared(f"{lp}.attention_norm.weight",
                                                 lambda lp=lp: tensor(f"{lp}.attention_norm.weight")), f.norm_eps)
                        q = g.heads(linear(n, f"{lp}.attention.wq.weight", scaled=True), 2, 3, H, hd)
                        kk = g.heads(linear(n, f"{lp}.attention.wk.weight"), 2, 3, KV, hd)
                        v = g.heads(linear(n, f"{lp}.attention.wv.weight"), 2, 3, KV, hd)
                        attn = g.grouped_attention(q, kk, v, 2, H, KV, hd, 3, 3)
                        seq = g.op("Add", [seq, linear(attn, f"{lp}.attention.wo.weight")], name="residual")
                        n = g.norm(seq, g.shared(f"{lp}.ffn_norm.weight", lambda lp=lp: tensor(f"{lp}.ffn_norm.weight")),
                                   f.norm_eps)
                        w1, w3 = f"{lp}.feed_forward.w1.weight", f"{lp}.feed_forward.w3.weight"
                        ffn = g.swiglu(n, g.shared(f"{lp}.feed_forward.w1_w3", lambda w1=w1, w3=w3: np.concatenate(
                            [tensor(w1), tensor(w3)]).T), f.hidden_dim,
                            g.shared(f"{lp}.feed_forward.w2.weight", lambda lp=lp: tensor(f"{lp}.feed_forward.w2.weight").T))
                        seq = g.op("Add", [seq, ffn], name="residual")
                token0 = g.op("Reshape", [g.op("Slice", [seq, g.i64(0), g.i64(1), g.i64(1)]), g.i64(2, dim)])
                token0 = g.norm(token0, g.shared(f"{p}.norm.weight", lambda: tensor(f"{p}.norm.weight")), f.norm_eps)
                velocity = linear(token0, f"{p}.acoustic_codebook_output.weight")  # [2, n_ac]
                guided = g.op("ReduceSum", [g.op("Mul", [velocity, cfg_weights]), g.i64(0)], keepdims=1, name="guided")
                last = k == steps - 1
                x = g.op("Add", [x, g.op("Mul", [guided, g.const(timesteps[k + 1] - timesteps[k])])], name="x_next",
                         outputs=[g.add_output("latent", FLOAT, [1, n_ac])] if last else None)
        return g.finish()
    except BaseException:
        g.abort()
        raise


def frames_done_cap(config: ModelConfig) -> int:
    """frames_done past which the codec graph computes nothing different: every attention window is full
    (and the first-chunk paddings are long past)."""
    rate, cap = 1, 1
    for block in config.codec.blocks:
        if block.kind == "transformer":
            cap = max(cap, -(-block.window // rate))
        elif block.kind == "conv_transpose":
            rate *= block.stride
    return cap


def build_codec_htp(config: ModelConfig, tensor: Callable[[str], np.ndarray], path: Path, frames: int) -> GraphFile:
    c, a = config.codec, config.audio
    K = frames
    g = _HtpGraph("codec_decoder", path, tensor)
    try:
        codes = g.add_input("codes", INT32, [K, a.num_codebooks])
        frames_in = g.add_input("frames_done", FLOAT, [1])
        done = g.op("Min", [frames_in, g.const([float(frames_done_cap(config))])], name="frames_done_capped")
        state = codec_state(config)
        inputs = {name: g.add_input(name, FLOAT, shape) for name, shape in state.items()}
        first = g.op("Sub", [g.const([1.0]), g.op("Clip", [done, g.const(0.0), g.const(1.0)])], name="first_chunk")
        later = g.op("Sub", [g.const([1.0]), first], name="later_chunk")
        with g.scope("quantizer"):
            q = "audio_tokenizer.quantizer.semantic_codebook"
            table = tensor(f"{q}.embedding_sum") / np.maximum(tensor(f"{q}.cluster_usage"), np.float32(1e-5))[:, None]
            i32 = lambda *v: g.const(list(v), np.int32)  # noqa: E731
            semantic = g.op("Gather", [g.weight("semantic_embedding", table.astype(np.float32)),
                                       g.op("Reshape", [g.op("Slice", [codes, i32(0), i32(1), i32(1)]), g.i64(K)])],
                            axis=0)
            acoustic = g.op("Slice", [codes, i32(1), i32(a.num_codebooks), i32(1)])
            acoustic = g.op("Sub", [g.op("Mul", [g.op("Cast", [acoustic], to=FLOAT),
                                                 g.const(2 / (a.acoustic_codebook_size - 1))]), g.const(1.0)])
            x = g.op("Reshape", [g.op("Transpose", [g.op("Concat", [semantic, acoustic], axis=1)], perm=[1, 0]),
                                 g.i64(1, c.latent_dim, K)])
        rate, length = 1, K  # decoder positions per frame, and in this chunk
        for block in c.blocks:
            prefix = f"audio_tokenizer.decoder_blocks.{block.index}"
            with g.scope(prefix):
                if block.kind == "transformer":
                    x = _codec_transformer(g, c, prefix, x, block, inputs, done, rate, length)
                    continue
                w = weight_norm(tensor(f"{prefix}.conv.parametrizations.weight.original0"),
                                tensor(f"{prefix}.conv.parametrizations.weight.original1"))
                tail_name = f"conv_{block.index}_tail"
                n_tail = state[tail_name][2]
                tail = inputs[tail_name]
                if block.kind == "conv":  # the whole decode's replicate padding, on the first chunk only
                    replicated = g.op("Expand", [g.op("Slice", [x, g.i64(0), g.i64(1), g.i64(2)]), g.i64(1, 1, n_tail)])
                    tail = g.op("Add", [g.op("Mul", [replicated, first]), g.op("Mul", [tail, later])], name="tail")
                joined = g.op("Concat", [tail, x], axis=2)
                g.op("Slice", [joined, g.i64(length), g.i64(length + n_tail), g.i64(2)],
                     outputs=[g.add_output(f"next_{tail_name}", FLOAT, state[tail_name])])
                if block.kind == "conv":
                    x = g.op("Conv", [joined, g.weight("weight", w)], strides=[block.stride])
                    length = (length + n_tail - block.kernel) // block.stride + 1
                else:  # outputs before s * tail belong to the previous chunk, the last k - s to the next
                    full = g.op("ConvTranspose", [joined, g.weight("weight", w)], strides=[block.stride])
                    start = block.stride * n_tail
                    x = g.op("Slice", [full, g.i64(start), g.i64(start + length * block.stride), g.i64(2)])
                    length *= block.stride
                    rate *= block.stride
        with g.scope("audio_tokenizer.output_proj"):
            p = "audio_tokenizer.output_proj.conv.parametrizations.weight"
            w = weight_norm(tensor(f"{p}.original0"), tensor(f"{p}.original1"))
            n_tail = c.patch_proj_kernel - 1
            reflected = g.op("Gather", [x, g.const(np.arange(n_tail, 0, -1), np.int64)], axis=2)  # x[6] .. x[1]
            tail = g.op("Add", [g.op("Mul", [reflected, first]), g.op("Mul", [inputs["output_tail"], later])])
            joined = g.op("Concat", [tail, x], axis=2)
            g.op("Slice", [joined, g.i64(length), g.i64(length + n_tail), g.i64(2)],
                 outputs=[g.add_output("next_output_tail", FLOAT, state["output_tail"])])
            g.op("Reshape", [g.op("Transpose", [g.op("Conv", [joined, g.weight("weight", w)])], perm=[0, 2, 1]),
                             g.i64(-1)], outputs=[g.add_output("audio", FLOAT, [K * c.samples_per_frame])])
        return g.finish()
    except BaseException:
        g.abort()
        raise


def _codec_transformer(g: _HtpGraph, c, prefix: str, x: str, block, inputs: dict, done: str, rate: int,
                       T: int) -> str:
    """The sliding-window transformer on a chunk of T positions, with the last `window` keys and values."""
    W = block.window
    x = g.op("Transpose", [x], perm=[0, 2, 1])  # [1, T, C]
    with g.scope("alibi"):
        keys = np.arange(T + W, dtype=np.float32) - W  # key positions relative to the chunk's first
        rel = keys[None, :] - np.arange(T, dtype=np.float32)[:, None]  # j - i, [T, W + T]
        inside = (rel <= 0) & (rel >= -W)
        alibi = np.where(inside[None], alibi_slopes(c.n_heads)[:, None, None] * rel[None], MASK).astype(np.float32)
        # cached slots before the utterance's first position hold nothing: key slot j is empty when
        # j < W - min(frames_done * rate, W), i.e. clip(W - valid - j, 0, 1) = 1
        valid = g.op("Min", [g.op("Mul", [done, g.const([float(rate)])]), g.const([float(W)])])
        empty = g.op("Clip", [g.op("Sub", [g.op("Sub", [g.const([float(W)]), valid]),
                                           g.const(np.arange(T + W, dtype=np.float32))]), g.const(0.0), g.const(1.0)],
                     name="empty")
        bias = g.op("Add", [g.const(alibi[None], name="alibi"), g.op("Mul", [empty, g.const(MASK)])], name="bias")
    H, KV, hd = c.n_heads, c.n_kv_heads, c.head_dim
    for k in range(block.n_layers):
        p = f"{prefix}.layers.{k}"
        names = [f"block_{block.index}_layer_{k}_{kind}" for kind in ("keys", "values")]
        with g.scope(f"layers.{k}"):
            n = g.norm(x, g.tensor(f"{p}.attention_norm.weight"), c.norm_eps)
            q = g.norm(g.matmul(n, g.tensor(f"{p}.attention.wq.weight").T, "wq"),
                       g.tensor(f"{p}.attention.q_norm.weight") / np.float32(math.sqrt(hd)), c.qk_norm_eps)
            kk = g.norm(g.matmul(n, g.tensor(f"{p}.attention.wk.weight").T, "wk"),
                        g.tensor(f"{p}.attention.k_norm.weight"), c.qk_norm_eps)
            v = g.matmul(n, g.tensor(f"{p}.attention.wv.weight").T, "wv")
            keys_all = g.op("Concat", [inputs[names[0]], g.heads(kk, 1, T, KV, hd)], axis=2, name="keys")
            values_all = g.op("Concat", [inputs[names[1]], g.heads(v, 1, T, KV, hd)], axis=2, name="values")
            for name, value in zip(names, (keys_all, values_all)):  # the last `window` positions stay
                g.op("Slice", [value, g.i64(T), g.i64(T + W), g.i64(2)],
                     outputs=[g.add_output(f"next_{name}", FLOAT, [1, KV, W, hd])])
            attn = g.grouped_attention(g.heads(q, 1, T, H, hd), keys_all, values_all, 1, H, KV, hd, T, T + W, bias)
            wo = g.tensor(f"{p}.attention.wo.weight") * g.tensor(f"{p}.attention_scale")[:, None]
            x = g.op("Add", [x, g.matmul(attn, wo.T, "wo")], name="residual")
            n = g.norm(x, g.tensor(f"{p}.ffn_norm.weight"), c.norm_eps)
            with g.scope("feed_forward"):
                w1, w3 = g.tensor(f"{p}.feed_forward.w1.weight"), g.tensor(f"{p}.feed_forward.w3.weight")
                w2 = g.tensor(f"{p}.feed_forward.w2.weight") * g.tensor(f"{p}.ffn_scale")[:, None]
                x = g.op("Add", [x, g.swiglu(n, np.concatenate([w1, w3]).T, len(w1), w2.T)], name="residual")
    return g.op("Transpose", [x], perm=[0, 2, 1])


def layer_groups(n_layers: int, parts: int) -> list[range]:
    """`parts` consecutive groups of layers, as equal as they come (the first ones a layer longer)."""
    size, extra = divmod(n_layers, parts)
    groups, first = [], 0
    for k in range(parts):
        stop = first + size + (k < extra)
        groups.append(range(first, stop))
        first = stop
    return groups


def build_backbone_parts(config: ModelConfig, tensor: Callable[[str], np.ndarray], path: Path, rows: int,
                         positions: int, parts: int) -> tuple[GraphFile, list[dict]]:
    """The backbone in `parts` graphs run one after the other (`path`, then `<stem>.part1.onnx`, ...): a 3B
    backbone does not compile as one HTP graph (docs/deploy-qnn.md). Returns the whole backbone's GraphFile
    (its inputs and outputs, every part's files) and one record per part: file, data, layers, inputs, outputs."""
    files, records, inputs, outputs, hashes = [], [], {}, {}, {}
    for k, layers in enumerate(layer_groups(config.backbone.n_layers, parts)):
        part_path = path if k == 0 else path.with_name(f"{path.stem}.part{k}.onnx")
        g = build_backbone_htp(config, tensor, part_path, rows, positions, layers)
        files.append(g)
        records.append({"file": part_path.name, "data": f"{part_path.name}.data" if f"{part_path.name}.data" in g.hashes
                        else None, "layers": [layers.start, layers.stop], "inputs": list(g.inputs),
                        "outputs": list(g.outputs)})
        inputs.update({k_: v for k_, v in g.inputs.items() if k_ != "hidden_in"})
        outputs.update({k_: v for k_, v in g.outputs.items() if k_ != "hidden_out"})
        hashes.update(g.hashes)
    return GraphFile("backbone_step", inputs, outputs, hashes, files[0].precision, []), records


def npu_builders(config: ModelConfig, tensor: Callable[[str], np.ndarray], positions: int, shapes) -> dict:
    """{graph: (build(path) -> GraphFile, its manifest "htp" record)} for the NPU form with `shapes` (a
    voxtral_edge.quant.htp.NpuShapes) and `positions` cache positions. A backbone in several parts adds
    "parts" to its record (see build_backbone_parts)."""
    b = config.backbone
    steps = shapes.steps or config.flow_head.n_decoding_steps
    first, stop = semantic_rows(config)
    backbone = {"rows": shapes.rows, "positions": positions, "rope_theta": b.rope_theta, "mask": MASK,
                "semantic_ids": [first, stop], "logits": config.audio.semantic_logits}

    def build_backbone(path: Path) -> GraphFile:
        if shapes.parts == 1:
            return build_backbone_htp(config, tensor, path, shapes.rows, positions)
        g, backbone["parts"] = build_backbone_parts(config, tensor, path, shapes.rows, positions, shapes.parts)
        return g

    return {
        "backbone_step": (build_backbone, backbone),
        "flow_head": (lambda path: build_flow_head_htp(config, tensor, path, steps), {"steps": steps}),
        "codec_decoder": (lambda path: build_codec_htp(config, tensor, path, shapes.frames),
                          {"frames": shapes.frames, "frames_done_cap": frames_done_cap(config)}),
    }
