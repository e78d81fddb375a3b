"""The three ONNX graphs, built straight from checkpoint tensors (no tracing).

backbone_step   inputs_embeds [1, T, dim], past_length [1], past_key_i/past_value_i [1, kv_heads, max_context, head_dim]
                -> hidden_states [1, T, dim] (after the final norm), semantic_logits [1, n_logits] (last position,
                EMPTY_AUDIO and padding at -inf), present_key_i/present_value_i. T > 1 is a prefill. Attention is
                onnxruntime's GroupQueryAttention with rotary (interleaved pairs) inside it; bound to the same
                buffer as input and output, the KV cache is written in place, never copied.
flow_head       noise [1, n_acoustic], h [1, dim], timesteps [steps + 1], cfg_weights [B] -> codes [1, n_acoustic]
                (int64) and latent [1, n_acoustic]: a whole frame, every Euler step in a Loop, guidance and
                FSQ rounding inside, what does not change between steps computed once (build_flow_head).
                (flow_velocity, one evaluation x, t, h -> velocity, is built for tests and benchmarks only.)
codec_decoder   codes [K, n_codebooks] of K >= 1 new frames (no specials), frames_done [1] and the carried state
                (conv tails, windowed attention caches) -> audio [K * samples_per_frame] and next_<state>.

Weight layout changes done here, each exact up to float rounding: linear weights stored [in, out] for
MatMul; wq/wk/wv packed into one matrix and w1/w3 into another; weight norm and the codec's layer
scales folded into the weights; the semantic embedding divided by its cluster usage.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from onnx import TensorProto, helper

from .config import EMPTY_AUDIO, N_AUDIO_SPECIALS, ModelConfig
from ..quant.matmul import quantized_weight
from ..quant.plans import GraphPlan

from .onnx_graph import MS_DOMAIN, GraphBuilder
from .reference import alibi_slopes, weight_norm

FLOAT, INT64 = TensorProto.FLOAT, TensorProto.INT64
DTYPE_NAMES = {FLOAT: "float32", INT64: "int64", TensorProto.INT32: "int32"}


@dataclass
class GraphFile:
    """What the manifest records about an exported graph."""

    name: str
    inputs: dict[str, dict]
    outputs: dict[str, dict]
    hashes: dict[str, str]  # file name -> sha256
    precision: str = "fp32"
    quantized: list[str] = field(default_factory=list)  # the weights stored quantized


class _Graph(GraphBuilder):
    """GraphBuilder plus the layers the three graphs share; `plan` decides which linear layers are
    quantized, weight by weight, as they are written."""

    def __init__(self, name: str, path: Path, tensor: Callable[[str], np.ndarray], plan: GraphPlan | None = None):
        super().__init__(name, path)
        self.tensor = tensor
        self.plan = plan or GraphPlan()
        self.quantized: list[str] = []
        self.io: dict[str, dict[str, dict]] = {"inputs": {}, "outputs": {}}

    def add_input(self, name: str, elem_type: int, shape: list) -> str:
        self.io["inputs"][name] = {"dtype": DTYPE_NAMES[elem_type], "shape": shape}
        return self.input(name, elem_type, shape)

    def add_output(self, name: str, elem_type: int, shape: list) -> str:
        self.io["outputs"][name] = {"dtype": DTYPE_NAMES[elem_type], "shape": shape}
        return self.output(name, elem_type, shape)

    def finish(self) -> GraphFile:
        return GraphFile(self.name, self.io["inputs"], self.io["outputs"], self.save(), self.plan.precision,
                         self.quantized)

    # layers ---------------------------------------------------------------------------------
    def rms_norm(self, x: str, weight: str, eps: float, outputs: list[str] | None = None) -> str:
        w = self.weight("norm_weight", self.tensor(weight))
        return self.op("RMSNormalization", [x, w], axis=-1, epsilon=float(eps), name="rms_norm", outputs=outputs)

    def linear(self, x: str, weight: np.ndarray, name: str, outputs: list[str] | None = None) -> str:
        """x @ weight.T for a checkpoint weight [out, in], quantized when the plan says so."""
        return self.linear_weight(weight, name)(x, outputs)

    def linear_weight(self, weight: np.ndarray, name: str) -> Callable[..., str]:
        """Write a checkpoint weight [out, in] once (quantized when the plan says so); returns a function
        x (, outputs) -> x @ weight.T that adds one node per call, all reading that one copy."""
        weight_kn = np.ascontiguousarray(weight.T)
        full_name = "/".join(self._scope + [name])
        spec = self.plan.spec_for(full_name)
        if spec is None:
            op_type, domain, inputs, attrs = "MatMul", "", [self.weight(name, weight_kn)], {}
        else:
            self.quantized.append(full_name)
            (op_type, inputs, attrs), domain = quantized_weight(self, weight_kn, spec, name), MS_DOMAIN
        return lambda x, outputs=None: self.op(op_type, [x, *inputs], domain=domain, name=name, outputs=outputs,
                                               **attrs)

    def feed_forward(self, x: str, prefix: str, scale: np.ndarray | None = None) -> str:
        """SwiGLU with w1 and w3 in one MatMul; an optional output scale folded into w2."""
        with self.scope("feed_forward"):
            w1, w3 = self.tensor(f"{prefix}.feed_forward.w1.weight"), self.tensor(f"{prefix}.feed_forward.w3.weight")
            gate_up = self.linear(x, np.concatenate([w1, w3]), "w1_w3")
            gate, up = self.op("Split", [gate_up, self.const([len(w1), len(w3)], np.int64)], 2, axis=-1)
            act = self.op("Mul", [self.op("Mul", [gate, self.op("Sigmoid", [gate])], name="silu"), up])
            w2 = self.tensor(f"{prefix}.feed_forward.w2.weight")
            return self.linear(act, w2 if scale is None else w2 * scale[:, None], "w2")

    def heads(self, x: str, n_heads: int, head_dim: int) -> str:
        """[B, S, n*d] -> [B, n, S, d]."""
        return self.op("Transpose", [self.op("Reshape", [x, self.const([0, 0, n_heads, head_dim], np.int64)])],
                       perm=[0, 2, 1, 3])

    def attention(self, x: str, prefix: str, n_heads: int, n_kv_heads: int, head_dim: int, bias: str | None = None,
                  qk_norm_eps: float | None = None, out_scale: np.ndarray | None = None,
                  queries: str | None = None, past: tuple[str, str] | None = None) -> str:
        """Multi-head attention with grouped KV heads over x [B, S, D]. `bias` is added to the scores; with
        `qk_norm_eps`, q and k are RMS-normed over their full width before the head split. `queries`
        [B, S', D] asks only for those positions' outputs (default: all of x). `past` (keys, values)
        [B, kv_heads, P, head_dim] come before x's; the concatenation is left in `self.present`."""
        with self.scope("attention"):
            q = self.linear(x if queries is None else queries, self.tensor(f"{prefix}.attention.wq.weight"), "wq")
            k = self.linear(x, self.tensor(f"{prefix}.attention.wk.weight"), "wk")
            v = self.linear(x, self.tensor(f"{prefix}.attention.wv.weight"), "wv")
            if qk_norm_eps is not None:
                q = self.rms_norm(q, f"{prefix}.attention.q_norm.weight", qk_norm_eps)
                k = self.rms_norm(k, f"{prefix}.attention.k_norm.weight", qk_norm_eps)
            out = self.attend(q, k, v, n_heads, n_kv_heads, head_dim, bias, past)
            wo = self.tensor(f"{prefix}.attention.wo.weight")
            return self.linear(out, wo if out_scale is None else wo * out_scale[:, None], "wo")

    def attend(self, q: str, k: str, v: str, n_heads: int, n_kv_heads: int, head_dim: int, bias: str | None = None,
               past: tuple[str, str] | None = None) -> str:
        """softmax(q k^T / sqrt(d) + bias) v for q [B, S', H*d], k and v [B, S, Hkv*d] -> [B, S', H*d]."""
        q, k, v = (self.heads(t, n, head_dim) for t, n in ((q, n_heads), (k, n_kv_heads), (v, n_kv_heads)))
        if past is not None:  # earlier positions first: [1, kv_heads, past + S, head_dim]
            k = self.op("Concat", [past[0], k], axis=2, name="keys")
            v = self.op("Concat", [past[1], v], axis=2, name="values")
            self.present = (k, v)
        if n_heads != n_kv_heads:  # query head h reads KV head h // group, like repeat_interleave
            group = self.const([1, 1, n_heads // n_kv_heads, 1, 1], np.int64)
            merged = self.const([0, n_heads, -1, head_dim], np.int64)
            k, v = (self.op("Reshape", [self.op("Expand", [self.op("Unsqueeze", [t, self.const([2], np.int64)]),
                                                             group]), merged]) for t in (k, v))
        scores = self.op("Mul", [self.op("MatMul", [q, self.op("Transpose", [k], perm=[0, 1, 3, 2])]),
                                 self.const(1 / math.sqrt(head_dim))], name="scores")
        if bias is not None:
            scores = self.op("Add", [scores, bias])
        out = self.op("MatMul", [self.op("Softmax", [scores], axis=-1), v])
        return self.op("Reshape", [self.op("Transpose", [out], perm=[0, 2, 1, 3]),
                                   self.const([0, 0, n_heads * head_dim], np.int64)])


def rope_tables(head_dim: int, theta: float, positions: int) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin [positions, head_dim / 2] for rotary pairs, computed in float64."""
    freqs = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    angles = np.arange(positions, dtype=np.float64)[:, None] * freqs[None, :]
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def semantic_mask(config: ModelConfig) -> np.ndarray:
    """0 for the ids greedy decoding may pick, -inf for EMPTY_AUDIO and the padding rows."""
    mask = np.zeros(config.audio.semantic_logits, dtype=np.float32)
    mask[EMPTY_AUDIO] = -np.inf
    mask[N_AUDIO_SPECIALS + config.audio.semantic_codebook_size:] = -np.inf
    return mask


def build_backbone(config: ModelConfig, tensor: Callable[[str], np.ndarray], path: Path, max_context: int,
                   plan: GraphPlan | None = None) -> GraphFile:
    b = config.backbone
    g = _Graph("backbone_step", path, tensor, plan)
    try:
        x = g.add_input("inputs_embeds", FLOAT, [1, "T", b.dim])
        past_length = g.add_input("past_length", INT64, [1])
        kv_shape = [1, b.n_kv_heads, "max_context", b.head_dim]
        with g.scope("lengths"):  # GroupQueryAttention takes lengths, not positions
            t = g.op("Gather", [g.op("Shape", [x]), g.const(1, np.int64)], axis=0, name="T")
            total = g.op("Add", [past_length, t], name="total")
            seqlens_k = g.op("Cast", [g.op("Sub", [total, g.const([1], np.int64)])], to=TensorProto.INT32,
                             name="seqlens_k")
            total_length = g.op("Cast", [g.op("Squeeze", [total, g.const([0], np.int64)])], to=TensorProto.INT32,
                                name="total_sequence_length")
        cos, sin = rope_tables(b.head_dim, b.rope_theta, max_context)
        cos, sin = g.weight("rope_cos", cos), g.weight("rope_sin", sin)
        for i in range(b.n_layers):
            p = f"layers.{i}"
            with g.scope(p):
                past_k = g.add_input(f"past_key_{i}", FLOAT, kv_shape)
                past_v = g.add_input(f"past_value_{i}", FLOAT, kv_shape)
                present = [g.add_output(f"present_key_{i}", FLOAT, kv_shape),
                           g.add_output(f"present_value_{i}", FLOAT, kv_shape)]
                h = g.rms_norm(x, f"{p}.attention_norm.weight", b.norm_eps)
                qkv = g.linear(h, np.concatenate([tensor(f"{p}.attention.{w}.weight") for w in ("wq", "wk", "wv")]),
                               "wqkv")  # packed: GroupQueryAttention splits q, k, v itself
                attn = g.op("GroupQueryAttention", [qkv, "", "", past_k, past_v, seqlens_k, total_length, cos, sin],
                            domain=MS_DOMAIN, num_heads=b.n_heads, kv_num_heads=b.n_kv_heads, do_rotary=1,
                            rotary_interleaved=1, scale=1 / math.sqrt(b.head_dim), name="attention",
                            outputs=[g.unique("attention")] + present)[0]
                x = g.op("Add", [x, g.linear(attn, tensor(f"{p}.attention.wo.weight"), "wo")], name="residual")
                h = g.rms_norm(x, f"{p}.ffn_norm.weight", b.norm_eps)
                x = g.op("Add", [x, g.feed_forward(h, p)], name="residual")
        hidden = g.rms_norm(x, "norm.weight", b.norm_eps,
                            outputs=[g.add_output("hidden_states", FLOAT, [1, "T", b.dim])])
        with g.scope("semantic_head"):
            last = g.op("Gather", [hidden, g.op("Sub", [t, g.const(1, np.int64)])], axis=1, name="last")
            logits = g.linear(last, tensor("acoustic_transformer.semantic_codebook_output.weight"), "logits")
            g.op("Add", [logits, g.weight("mask", semantic_mask(config))],
                 outputs=[g.add_output("semantic_logits", FLOAT, [1, config.audio.semantic_logits])])
        return g.finish()
    except BaseException:
        g.abort()
        raise


def time_frequencies(dim: int) -> np.ndarray:
    return np.exp(-math.log(10000.0) * np.arange(dim // 2, dtype=np.float64) / (dim // 2)).astype(np.float32)


def build_flow_velocity(config: ModelConfig, tensor: Callable[[str], np.ndarray], path: Path,
                        plan: GraphPlan | None = None) -> GraphFile:
    """flow_velocity: x [B, n_acoustic], t [1], h [B, dim] -> velocity [B, n_acoustic], one evaluation of
    the flow head. Not part of a bundle (the runtime uses flow_head, a whole frame): it checks the
    layers against the reference's `velocity` and measures one Euler step alone."""
    f, a = config.flow_head, config.audio
    p = "acoustic_transformer"
    g = _Graph("flow_velocity", path, tensor, plan)
    try:
        x = g.add_input("x", FLOAT, ["B", a.n_acoustic_codebook])
        t = g.add_input("t", FLOAT, [1])
        h = g.add_input("h", FLOAT, ["B", config.backbone.dim])
        with g.scope("tokens"):
            acoustic = g.linear(x, tensor(f"{p}.input_projection.weight"), "input_projection")
            angles = g.op("Mul", [t, g.weight("time_frequencies", time_frequencies(f.dim))])
            t_emb = g.op("Unsqueeze", [g.op("Concat", [g.op("Cos", [angles]), g.op("Sin", [angles])], axis=0),
                                       g.const([0], np.int64)])
            t_proj = g.op("Expand", [g.linear(t_emb, tensor(f"{p}.time_projection.weight"), "time_projection"),
                                     g.op("Shape", [acoustic])])
            llm = g.linear(h, tensor(f"{p}.llm_projection.weight"), "llm_projection")
            seq = g.op("Concat", [g.op("Unsqueeze", [v, g.const([1], np.int64)]) for v in (acoustic, t_proj, llm)],
                       axis=1, name="sequence")  # [B, 3, dim]: x, t, h
        for j in range(f.n_layers):
            lp = f"{p}.layers.{j}"
            with g.scope(lp):
                normed = g.rms_norm(seq, f"{lp}.attention_norm.weight", f.norm_eps)
                queries = None
                if j == f.n_layers - 1:  # only token 0 is read out: its query, output and FFN are all that's left
                    seq = g.op("Slice", [seq, g.const([0], np.int64), g.const([1], np.int64), g.const([1], np.int64)])
                    queries = g.op("Slice", [normed, g.const([0], np.int64), g.const([1], np.int64),
                                             g.const([1], np.int64)], name="token0")
                attn = g.attention(normed, lp, f.n_heads, f.n_kv_heads, f.head_dim, queries=queries)
                seq = g.op("Add", [seq, attn], name="residual")
                seq = g.op("Add", [seq, g.feed_forward(g.rms_norm(seq, f"{lp}.ffn_norm.weight", f.norm_eps), lp)],
                           name="residual")
        out = g.op("Gather", [g.rms_norm(seq, f"{p}.norm.weight", f.norm_eps), g.const(0, np.int64)], axis=1)
        g.linear(out, tensor(f"{p}.acoustic_codebook_output.weight"), "acoustic_codebook_output",
                 outputs=[g.add_output("velocity", FLOAT, ["B", a.n_acoustic_codebook])])
        return g.finish()
    except BaseException:
        g.abort()
        raise


def build_flow_head(config: ModelConfig, tensor: Callable[[str], np.ndarray], path: Path,
                    plan: GraphPlan | None = None) -> GraphFile:
    """flow_head: one frame's acoustic codes in one call, as Reference.acoustic_codes computes them.

    noise [1, n_acoustic] (x at t = 0), h [1, dim], timesteps [steps + 1] (the Euler schedule) and
    cfg_weights [B]: [alpha, 1 - alpha] guides with an unconditional row, [1] runs the conditional row
    alone -> codes [1, n_acoustic] (int64, 0..levels-1) and latent [1, n_acoustic] (x at t = 1, unclipped).

    A Loop runs the Euler steps (any number, one set of kernels and packed weights); what does not change
    between steps is computed before it, once per frame: every step's time token (time_projection on all
    `steps` rows at once), the conditioning token llm_projection(h) and its first-layer queries, keys and
    values. The unconditional row's token is llm_projection(0) = 0 (no biases), a constant, and so are its
    first-layer q, k, v (RMS norm of 0 is 0). Inside a step, the noisy-latent and time tokens are the same
    in both rows until their first attention: their first-layer q, k, v are computed once, for both.
    """
    f, a = config.flow_head, config.audio
    p = "acoustic_transformer"
    n_ac, dim = a.n_acoustic_codebook, f.dim
    q_width, kv_width = f.n_heads * f.head_dim, f.n_kv_heads * f.head_dim
    g = _Graph("flow_head", path, tensor, plan)
    try:
        noise = g.add_input("noise", FLOAT, [1, n_ac])
        h = g.add_input("h", FLOAT, [1, config.backbone.dim])
        timesteps = g.add_input("timesteps", FLOAT, ["steps_plus_1"])
        cfg_weights = g.add_input("cfg_weights", FLOAT, ["B"])
        i64 = lambda *v: g.const(list(v), np.int64)  # noqa: E731
        first = f"{p}.layers.0"
        with g.scope("frame"):  # once per frame
            rows = g.op("Shape", [cfg_weights], name="rows")  # [B]
            steps = g.op("Sub", [g.op("Shape", [timesteps]), i64(1)], name="steps")
            starts = g.op("Slice", [timesteps, i64(0), steps, i64(0)], name="step_starts")  # t_k, k < steps
            angles = g.op("Mul", [g.op("Unsqueeze", [starts, i64(1)]),
                                  g.weight("time_frequencies", time_frequencies(dim))])
            time_tokens = g.linear(g.op("Concat", [g.op("Cos", [angles]), g.op("Sin", [angles])], axis=1),
                                   tensor(f"{p}.time_projection.weight"), "time_projection")  # [steps, dim]
            cond = g.linear(h, tensor(f"{p}.llm_projection.weight"), "llm_projection")  # [1, dim]
            h_tokens = g.op("Slice", [g.op("Concat", [cond, g.const(np.zeros((1, dim), np.float32), name="uncond")],
                                            axis=0), i64(0), rows, i64(0)], name="h_tokens")  # [B, dim]
        with g.scope(first):
            norm0 = g.weight("norm_weight", tensor(f"{first}.attention_norm.weight"))
            with g.scope("attention"):
                w0 = {w: g.linear_weight(tensor(f"{first}.attention.{w}.weight"), w) for w in ("wq", "wk", "wv")}
        with g.scope("frame"):
            h_normed = g.op("RMSNormalization", [g.op("Slice", [h_tokens, i64(0), i64(1), i64(0)]), norm0], axis=-1,
                            epsilon=float(f.norm_eps), name="h_norm")
            zero = {"wq": q_width, "wk": kv_width, "wv": kv_width}
            # [B, 1, width]: the conditional row's q, k, v, then the unconditional row's zeros
            h_qkv = {w: g.op("Unsqueeze", [g.op("Slice", [g.op("Concat", [w0[w](h_normed), g.const(
                np.zeros((1, zero[w]), np.float32), name=f"uncond_{w}")], axis=0), i64(0), rows, i64(0)]), i64(1)],
                             name=f"h_{w}") for w in w0}

        # one Euler step: x_k -> x_{k+1}
        with g.subgraph() as body_nodes:
            k, x = "step", "x_k"
            with g.scope("step"):
                g._names.update([k, x, "cond_in"])
                k1 = g.op("Unsqueeze", [k, i64(0)], name="k")
                dt = g.op("Sub", [g.op("Gather", [timesteps, g.op("Add", [k1, i64(1)])], axis=0),
                                  g.op("Gather", [timesteps, k1], axis=0)], name="dt")  # [1]
                acoustic = g.linear(x, tensor(f"{p}.input_projection.weight"), "input_projection")
                shared = g.op("Concat", [acoustic, g.op("Gather", [time_tokens, k1], axis=0)], axis=0,
                              name="x_t_tokens")  # [2, dim], the same in every row
                per_row = lambda t, n, width: g.op("Expand", [g.op("Unsqueeze", [t, i64(0)]), g.op(  # noqa: E731
                    "Concat", [rows, i64(n, width)], axis=0)])  # [n, width] -> [B, n, width]
            last = f.n_layers == 1
            with g.scope(first):
                normed = g.op("RMSNormalization", [shared, norm0], axis=-1, epsilon=float(f.norm_eps), name="norm")
                with g.scope("attention"):
                    q_s, k_s, v_s = (w0[w](normed) for w in ("wq", "wk", "wv"))
                    if last:  # only token 0 is read out
                        q = per_row(g.op("Slice", [q_s, i64(0), i64(1), i64(0)]), 1, q_width)
                    else:
                        q = g.op("Concat", [per_row(q_s, 2, q_width), h_qkv["wq"]], axis=1)
                    kk = g.op("Concat", [per_row(k_s, 2, kv_width), h_qkv["wk"]], axis=1)
                    v = g.op("Concat", [per_row(v_s, 2, kv_width), h_qkv["wv"]], axis=1)
                    attn = g.attend(q, kk, v, f.n_heads, f.n_kv_heads, f.head_dim)
                    attn = g.linear(attn, tensor(f"{first}.attention.wo.weight"), "wo")
                seq = g.op("Concat", [per_row(shared, 2, dim), g.op("Unsqueeze", [h_tokens, i64(1)])], axis=1,
                           name="sequence")  # [B, 3, dim]: x, t, h
                if last:
                    seq = g.op("Slice", [seq, i64(0), i64(1), i64(1)])
                seq = g.op("Add", [seq, attn], name="residual")
                seq = g.op("Add", [seq, g.feed_forward(g.rms_norm(seq, f"{first}.ffn_norm.weight", f.norm_eps), first)],
                           name="residual")
            for j in range(1, f.n_layers):
                lp = f"{p}.layers.{j}"
                with g.scope(lp):
                    normed = g.rms_norm(seq, f"{lp}.attention_norm.weight", f.norm_eps)
                    queries = None
                    if j == f.n_layers - 1:  # only token 0 is read out: its query, output and FFN are all that's left
                        seq = g.op("Slice", [seq, i64(0), i64(1), i64(1)])
                        queries = g.op("Slice", [normed, i64(0), i64(1), i64(1)], name="token0")
                    attn = g.attention(normed, lp, f.n_heads, f.n_kv_heads, f.head_dim, queries=queries)
                    seq = g.op("Add", [seq, attn], name="residual")
                    seq = g.op("Add", [seq, g.feed_forward(g.rms_norm(seq, f"{lp}.ffn_norm.weight", f.norm_eps), lp)],
                               name="residual")
            with g.scope("step"):
                out = g.op("Gather", [g.rms_norm(seq, f"{p}.norm.weight", f.norm_eps), g.const(0, np.int64)], axis=1)
                velocity = g.linear(out, tensor(f"{p}.acoustic_codebook_output.weight"), "acoustic_codebook_output")
                guided = g.op("ReduceSum", [g.op("Mul", [velocity, g.op("Unsqueeze", [cfg_weights, i64(1)])]), i64(0)],
                              keepdims=1, name="guided")  # alpha v_cond + (1 - alpha) v_uncond, [1, n_ac]
                g.op("Add", [x, g.op("Mul", [guided, dt])], outputs=["x_next"])
                g.op("Identity", ["cond_in"], outputs=["cond_out"])
        body = helper.make_graph(
            body_nodes, "euler_step",
            [helper.make_tensor_value_info(k, INT64, []), helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
             helper.make_tensor_value_info(x, FLOAT, [1, n_ac])],
            [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
             helper.make_tensor_value_info("x_next", FLOAT, [1, n_ac])])
        latent = g.op("Loop", [g.op("Squeeze", [steps, i64(0)], name="trip_count"), "", noise], body=body,
                      outputs=[g.add_output("latent", FLOAT, [1, n_ac])])
        with g.scope("fsq"):  # (clip(x, -1, 1) + 1) / 2 * (levels - 1), rounded half to even like numpy
            scaled = g.op("Mul", [g.op("Div", [g.op("Add", [g.op("Clip", [latent, g.const(-1.0), g.const(1.0)]),
                                                            g.const(1.0)]), g.const(2.0)]),
                                  g.const(float(a.acoustic_codebook_size - 1))])
            g.op("Cast", [g.op("Round", [scaled])], to=INT64, outputs=[g.add_output("codes", INT64, [1, n_ac])])
        return g.finish()
    except BaseException:
        g.abort()
        raise


def _latent(g: _Graph, config: ModelConfig, codes: str) -> str:
    """codes [F, n_codebooks] -> [1, latent, F]: semantic embedding rows and acoustic values in [-1, 1]."""
    a = config.audio
    with g.scope("quantizer"):
        q = "audio_tokenizer.quantizer.semantic_codebook"
        table = g.tensor(f"{q}.embedding_sum") / np.maximum(g.tensor(f"{q}.cluster_usage"), np.float32(1e-5))[:, None]
        semantic = g.op("Gather", [g.weight("semantic_embedding", table),
                                   g.op("Gather", [codes, g.const(0, np.int64)], axis=1)], axis=0)
        acoustic = g.op("Slice", [codes, g.const([1], np.int64), g.const([a.num_codebooks], np.int64),
                                  g.const([1], np.int64)])
        acoustic = g.op("Sub", [g.op("Mul", [g.op("Cast", [acoustic], to=FLOAT),
                                             g.const(2 / (a.acoustic_codebook_size - 1))]), g.const(1.0)])
        latent = g.op("Concat", [semantic, acoustic], axis=1)  # [F, latent]
        return g.op("Unsqueeze", [g.op("Transpose", [latent], perm=[1, 0]), g.const([0], np.int64)])


def codec_state(config: ModelConfig) -> dict[str, list[int]]:
    """The codec's carried state between chunks: name -> shape (float32, zeros before the first chunk)."""
    c = config.codec
    state = {}
    for b in c.blocks:
        if b.kind == "conv":
            state[f"conv_{b.index}_tail"] = [1, b.in_dim, b.kernel - b.stride]
        elif b.kind == "conv_transpose":
            state[f"conv_{b.index}_tail"] = [1, b.in_dim, -(-b.kernel // b.stride) - 1]
        else:
            for k in range(b.n_layers):
                for kind in ("keys", "values"):
                    state[f"block_{b.index}_layer_{k}_{kind}"] = [1, c.n_kv_heads, b.window, c.head_dim]
    state["output_tail"] = [1, c.dim, c.patch_proj_kernel - 1]
    return state


def build_codec(config: ModelConfig, tensor: Callable[[str], np.ndarray], path: Path,
                plan: GraphPlan | None = None) -> GraphFile:
    """codec_decoder: codes of 1..K new frames + carried state -> their audio + the next state.

    Chunk after chunk, the audio equals the whole-utterance decode: each causal conv keeps its last
    input columns, each transposed conv its last input column (its overlap), each attention layer the
    keys and values of its window. Before the first chunk (frames_done = 0) the replicate and reflect
    paddings of the whole decode are rebuilt from the chunk itself; that chunk must be >= 1 frame. A
    whole utterance is one call with frames_done = 0 and zero state.
    """
    c, a = config.codec, config.audio
    g = _Graph("codec_decoder", path, tensor, plan)
    try:
        codes = g.add_input("codes", INT64, ["K", a.num_codebooks])
        frames_done = g.add_input("frames_done", INT64, [1])
        state = codec_state(config)
        inputs = {name: g.add_input(name, FLOAT, shape) for name, shape in state.items()}
        first = g.op("Reshape", [g.op("Equal", [frames_done, g.const([0], np.int64)]),
                                 g.const([1, 1, 1], np.int64)], name="first_chunk")
        x = _latent(g, config, codes)
        rate = 1  # positions per frame at the current block
        for block in c.blocks:
            prefix = f"audio_tokenizer.decoder_blocks.{block.index}"
            with g.scope(prefix):
                if block.kind == "transformer":
                    x = _codec_transformer_stream(g, c, prefix, x, block, inputs, frames_done, rate)
                    continue
                w = weight_norm(tensor(f"{prefix}.conv.parametrizations.weight.original0"),
                                tensor(f"{prefix}.conv.parametrizations.weight.original1"))
                tail_name = f"conv_{block.index}_tail"
                tail = inputs[tail_name]
                if block.kind == "conv":  # the whole decode's replicate padding, on the first chunk only
                    first_column = g.op("Slice", [x, g.const([0], np.int64), g.const([1], np.int64),
                                                  g.const([2], np.int64)])
                    replicated = g.op("Expand", [first_column, g.const([1, 1, block.kernel - block.stride], np.int64)])
                    tail = g.op("Where", [first, replicated, tail])
                joined = g.op("Concat", [tail, x], axis=2)
                _next_tail(g, joined, state[tail_name][2], tail_name)
                if block.kind == "conv":
                    x = g.op("Conv", [joined, g.weight("weight", w)], strides=[block.stride])
                else:  # outputs before s * tail columns belong to the previous chunk; the last k - s to the next
                    n_tail = state[tail_name][2]
                    full = g.op("ConvTranspose", [joined, g.weight("weight", w)], strides=[block.stride])
                    length = g.op("Mul", [g.op("Gather", [g.op("Shape", [x]), g.const([2], np.int64)]),
                                          g.const([block.stride], np.int64)])
                    start = g.const([block.stride * n_tail], np.int64)
                    x = g.op("Slice", [full, start, g.op("Add", [start, length]), g.const([2], np.int64)])
                    rate *= block.stride
        with g.scope("audio_tokenizer.output_proj"):
            p = "audio_tokenizer.output_proj.conv.parametrizations.weight"
            w = weight_norm(tensor(f"{p}.original0"), tensor(f"{p}.original1"))
            # the whole decode's reflect padding (x[6], ..., x[1]) on the first chunk
            reflected = g.op("Slice", [x, g.const([c.patch_proj_kernel - 1], np.int64), g.const([0], np.int64),
                                       g.const([2], np.int64), g.const([-1], np.int64)])
            joined = g.op("Concat", [g.op("Where", [first, reflected, inputs["output_tail"]]), x], axis=2)
            _next_tail(g, joined, c.patch_proj_kernel - 1, "output_tail")
            x = g.op("Conv", [joined, g.weight("weight", w)])
            g.op("Reshape", [g.op("Transpose", [x], perm=[0, 2, 1]), g.const([-1], np.int64)],
                 outputs=[g.add_output("audio", FLOAT, ["samples"])])
        return g.finish()
    except BaseException:
        g.abort()
        raise


def _next_tail(g: _Graph, joined: str, columns: int, name: str) -> None:
    """The last `columns` input columns become the next chunk's tail."""
    g.op("Slice", [joined, g.const([-columns], np.int64), g.const([np.iinfo(np.int64).max], np.int64),
                   g.const([2], np.int64)], outputs=[g.add_output(f"next_{name}", FLOAT, [1, "C", columns])])


def _codec_transformer_stream(g: _Graph, c, prefix: str, x: str, block, inputs: dict, frames_done: str,
                              rate: int) -> str:
    """The sliding-window transformer on a chunk, with the last `window` keys and values of each layer."""
    window = block.window
    x = g.op("Transpose", [x], perm=[0, 2, 1])  # [1, T, C]
    with g.scope("alibi"):
        t = g.op("Gather", [g.op("Shape", [x]), g.const(1, np.int64)], axis=0)
        keys = g.op("Sub", [g.op("Cast", [g.op("Range", [g.const(0, np.int64), g.op("Add", [t, g.const(window, np.int64)]),
                                                         g.const(1, np.int64)])], to=FLOAT), g.const(float(window))])
        queries = g.op("Cast", [g.op("Range", [g.const(0, np.int64), t, g.const(1, np.int64)])], to=FLOAT)
        rel = g.op("Sub", [g.op("Unsqueeze", [keys, g.const([0], np.int64)]),
                           g.op("Unsqueeze", [queries, g.const([1], np.int64)])], name="j_minus_i")  # [T, W + T]
        # cached slots before the utterance's first position hold nothing
        valid = g.op("Min", [g.op("Mul", [frames_done, g.const([rate], np.int64)]), g.const([window], np.int64)])
        empty = g.op("Less", [keys, g.op("Neg", [g.op("Cast", [valid], to=FLOAT)])])
        outside = g.op("Or", [g.op("Or", [g.op("Greater", [rel, g.const(0.0)]),
                                           g.op("Less", [rel, g.const(float(-window))])]),
                              g.op("Unsqueeze", [empty, g.const([0], np.int64)])])
        bias = g.op("Mul", [g.weight("slopes", alibi_slopes(c.n_heads)[:, None, None]),
                            g.op("Unsqueeze", [rel, g.const([0], np.int64)])])
        bias = g.op("Unsqueeze", [g.op("Where", [outside, g.const(-np.inf), bias]), g.const([0], np.int64)],
                    name="bias")
    for k in range(block.n_layers):
        p = f"{prefix}.layers.{k}"
        names = [f"block_{block.index}_layer_{k}_{kind}" for kind in ("keys", "values")]
        with g.scope(f"layers.{k}"):
            attn = g.attention(g.rms_norm(x, f"{p}.attention_norm.weight", c.norm_eps), p, c.n_heads, c.n_kv_heads,
                               c.head_dim, bias=bias, qk_norm_eps=c.qk_norm_eps,
                               out_scale=g.tensor(f"{p}.attention_scale"), past=(inputs[names[0]], inputs[names[1]]))
            for name, value in zip(names, g.present):  # the last `window` positions stay for the next chunk
                g.op("Slice", [value, g.const([-window], np.int64), g.const([np.iinfo(np.int64).max], np.int64),
                               g.const([2], np.int64)],
                     outputs=[g.add_output(f"next_{name}", FLOAT, [1, c.n_kv_heads, window, c.head_dim])])
            x = g.op("Add", [x, attn], name="residual")
            ffn = g.feed_forward(g.rms_norm(x, f"{p}.ffn_norm.weight", c.norm_eps), p,
                                 scale=g.tensor(f"{p}.ffn_scale"))
            x = g.op("Add", [x, ffn], name="residual")
    return g.op("Transpose", [x], perm=[0, 2, 1])
