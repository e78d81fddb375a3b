"""Quantized replacements for a MatMul with a constant weight, emitted into a graph being built.

nbits          onnxruntime's MatMulNBits (com.microsoft): weight-only, 4 or 8 bits, block-wise along K,
               symmetric (implicit zero point 2^(bits-1)) or asymmetric (a zero point per block).
               Packing uses onnxruntime's own C++ quantizers; `dequantize_nbits` reads the format back
               in plain numpy (the tests' oracle). accuracy_level 4 lets the CPU compute in int8.
dynamic-int8   DynamicQuantizeMatMul (com.microsoft): int8 weights with one symmetric scale per output
               column, activations quantized per call -- what onnxruntime's quantize_dynamic produces
               after its fusions, emitted directly. Weights use 7 bits (-63..63), onnxruntime's
               `reduce_range`: on x86 without VNNI (AVX2) the u8 x s8 kernel adds pairs of products in
               int16 with saturation, and full-range weights overflow it (flow-head cosine 0.87).

Both the exporter (tensor by tensor, while building a graph) and `voxtral-edge quantize` (rewriting a
built graph) go through `quantized_weight`. In the graphs with a batch dimension (backbone_step, flow_head)
dynamic int8 quantizes each utterance's activations on their own (`per_utterance_int8`): one scale per
tensor would let the other utterances of a batch change an utterance's numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from onnxruntime.capi._pybind_state import quantize_matmul_4bits, quantize_matmul_8bits

MS_DOMAIN = "com.microsoft"


@dataclass(frozen=True)
class QuantSpec:
    """How one graph's matmuls are quantized (method 'nbits' or 'dynamic-int8'; 'qdq': the whole graph in the
    NPU form, statically quantized with 16-bit activations, see voxtral_edge.quant.htp)."""

    method: str = "nbits"
    bits: int = 4
    block_size: int = 32
    symmetric: bool = True
    accuracy_level: int = 4

    @property
    def precision(self) -> str:
        if self.method == "qdq":
            return f"w{self.bits}a16"
        return "int8" if self.method == "dynamic-int8" else f"int{self.bits}"


@dataclass
class NBitsWeight:
    """A [K, N] weight in MatMulNBits layout: packed [N, blocks, blob], scales [N, blocks], zero points."""

    packed: np.ndarray
    scales: np.ndarray
    zero_points: np.ndarray | None
    k: int
    n: int
    bits: int
    block_size: int


def quantize_nbits(weight_kn: np.ndarray, spec: QuantSpec) -> NBitsWeight:
    """Block-quantize a MatMul weight B [K, N] along K (one scale per block of `block_size` rows per column)."""
    w = np.ascontiguousarray(weight_kn, dtype=np.float32)
    k, n = w.shape
    per_byte = 8 // spec.bits
    blocks = (k + spec.block_size - 1) // spec.block_size
    if blocks * spec.block_size != k:  # the last block is zero-padded, as onnxruntime's quantizer does
        w = np.pad(w, ((0, blocks * spec.block_size - k), (0, 0)))
    packed = np.zeros((n, blocks, spec.block_size // per_byte), dtype=np.uint8)
    scales = np.zeros((n, blocks), dtype=np.float32)
    zero_points = np.zeros((n, (blocks + per_byte - 1) // per_byte), dtype=np.uint8)
    quantize = quantize_matmul_4bits if spec.bits == 4 else quantize_matmul_8bits
    quantize(packed, w, scales, zero_points, spec.block_size, n, blocks * spec.block_size, spec.symmetric)
    return NBitsWeight(packed, scales, None if spec.symmetric else zero_points, k, n, spec.bits, spec.block_size)


def dequantize_nbits(q: NBitsWeight) -> np.ndarray:
    """The float weight [K, N] a MatMulNBits node computes with, read from the packed format in numpy."""
    per_byte = 8 // q.bits
    mask = (1 << q.bits) - 1
    # element i of a block lives in byte i // per_byte, at bit offset bits * (i % per_byte)
    values = np.stack([(q.packed >> (q.bits * j)) & mask for j in range(per_byte)], axis=-1)
    values = values.reshape(q.n, q.scales.shape[1], q.block_size).astype(np.float32)
    if q.zero_points is None:
        zero = np.full(q.scales.shape, 1 << (q.bits - 1), dtype=np.float32)
    else:
        zero = np.stack([(q.zero_points >> (q.bits * j)) & mask for j in range(per_byte)], axis=-1)
        zero = zero.reshape(q.n, -1)[:, : q.scales.shape[1]].astype(np.float32)
    w = (values - zero[..., None]) * q.scales[..., None]
    return w.reshape(q.n, -1)[:, : q.k].T


@dataclass
class Int8Weight:
    """A [K, N] weight as int8 with one symmetric scale per output column."""

    values: np.ndarray
    scales: np.ndarray


INT8_WEIGHT_MAX = 63  # 2 * 255 * 63 < 2^15: no int16 saturation in AVX2's vpmaddubsw


def quantize_int8_columns(weight_kn: np.ndarray) -> Int8Weight:
    w = np.asarray(weight_kn, dtype=np.float32)
    scales = np.maximum(np.abs(w).max(axis=0), 1e-12) / INT8_WEIGHT_MAX
    values = np.clip(np.round(w / scales), -INT8_WEIGHT_MAX, INT8_WEIGHT_MAX).astype(np.int8)
    return Int8Weight(values, scales.astype(np.float32))


@dataclass(frozen=True)
class QuantizedMatMul:
    """A quantized weight written into a graph once; `emit` adds one x @ weight that reads it (one weight can
    serve several nodes).

    per_utterance: dynamic int8 with one activation scale and zero point per index of x's first dimension (an
    utterance of a batch) instead of one per tensor, so that what an utterance gets does not depend on the
    others in its batch (`per_utterance_int8`)."""

    op_type: str
    inputs: tuple[str, ...]
    attrs: dict
    per_utterance: bool = False

    def emit(self, graph, x: str, name: str, outputs: list[str] | None = None) -> str:
        if self.per_utterance:
            return per_utterance_int8(graph, x, *self.inputs, name=name, outputs=outputs)
        return graph.op(self.op_type, [x, *self.inputs], domain=MS_DOMAIN, name=name, outputs=outputs, **self.attrs)


def quantized_weight(graph, weight_kn: np.ndarray, spec: QuantSpec, name: str, *,
                     per_utterance: bool = False) -> QuantizedMatMul:
    """Write x @ weight_kn's quantized weight into `graph` (a GraphBuilder). `per_utterance` (graphs with a
    batch dimension first) applies to dynamic int8 only: MatMulNBits already quantizes each row apart."""
    k, n = weight_kn.shape
    if spec.method == "dynamic-int8":
        q = quantize_int8_columns(weight_kn)
        values, scales = graph.weight(f"{name}_int8", q.values), graph.weight(f"{name}_scale", q.scales)
        if per_utterance:  # the zero point is applied through the columns' sums (see per_utterance_int8)
            sums = graph.weight(f"{name}_column_sums", q.values.sum(axis=0, dtype=np.int32))
            return QuantizedMatMul("MatMulInteger", (values, scales, sums), {}, per_utterance=True)
        return QuantizedMatMul("DynamicQuantizeMatMul", (values, scales, graph.weight(
            f"{name}_zero_point", np.zeros(n, dtype=np.int8))), {})
    q = quantize_nbits(weight_kn, spec)
    inputs = [graph.weight(f"{name}_q{spec.bits}", q.packed), graph.weight(f"{name}_scales", q.scales)]
    if q.zero_points is not None:
        inputs.append(graph.weight(f"{name}_zero_points", q.zero_points))
    attrs = {"accuracy_level": spec.accuracy_level} if spec.accuracy_level else {}
    return QuantizedMatMul("MatMulNBits", tuple(inputs), dict(K=k, N=n, bits=spec.bits, block_size=spec.block_size,
                                                                **attrs))


def per_utterance_int8(graph, x: str, values: str, scales: str, column_sums: str, *, name: str,
                       outputs: list[str] | None = None) -> str:
    """x [G, ..., K] @ an int8 weight, as DynamicQuantizeMatMul computes it for each x[g] on its own: bit for
    bit the same numbers (onnxruntime 1.32's GetQuantizationParameter, MLAS's QuantizeLinear and QGEMM):
    per utterance g, min and max of x[g] widened to include 0, scale (max - min) / 255 (1 when max == min),
    zero point round-half-even(clip(0 - min / scale, 0, 255)), uint8 values by QuantizeLinear; the product
    in int32 (MatMulInteger, exact) less zero point x the weight's column sums (exact); then
    float(acc) * (scale * column scale). Only ops with per-axis or elementwise semantics, so the rows of
    one utterance never meet another's."""
    from onnx import TensorProto

    i64 = lambda *v: graph.const(list(v), np.int64)  # noqa: E731
    with graph.scope(name):
        utterances = graph.op("Shape", [x], start=0, end=1, name="utterances")  # [G]
        xg = graph.op("Reshape", [x, graph.op("Concat", [utterances, i64(-1)], axis=0)], name="by_utterance")
        lo = graph.op("Min", [graph.op("ReduceMin", [xg, i64(1)], keepdims=1), graph.const(0.0)], name="min")
        hi = graph.op("Max", [graph.op("ReduceMax", [xg, i64(1)], keepdims=1), graph.const(0.0)], name="max")
        scale = graph.op("Where", [graph.op("Equal", [hi, lo]), graph.const(1.0),
                                   graph.op("Div", [graph.op("Sub", [hi, lo]), graph.const(255.0)])], name="x_scale")
        zero = graph.op("Cast", [graph.op("Round", [graph.op("Clip", [
            graph.op("Sub", [graph.const(0.0), graph.op("Div", [lo, scale])]), graph.const(0.0),
            graph.const(255.0)])])], to=TensorProto.UINT8, name="x_zero_point")  # [G, 1]
        flat = lambda t: graph.op("Reshape", [t, i64(-1)])  # noqa: E731
        quantized = graph.op("QuantizeLinear", [xg, flat(scale), flat(zero)], axis=0, name="x_uint8")
        k = graph.op("Shape", [x], start=-1, name="k")
        rows = graph.op("Reshape", [quantized, graph.op("Concat", [i64(-1), k], axis=0)], name="rows")
        acc = graph.op("MatMulInteger", [rows, values], name="acc")  # int32 [G * r, N]
        per_utterance = graph.op("Div", [graph.op("Shape", [xg], start=1, end=2), k], name="rows_per_utterance")
        per_row = lambda t: graph.op("Reshape", [graph.op("Expand", [t, graph.op(  # noqa: E731
            "Concat", [utterances, per_utterance], axis=0)]), i64(-1, 1)])  # [G, 1] -> [G * r, 1]
        acc = graph.op("Sub", [acc, graph.op("Mul", [per_row(graph.op("Cast", [zero], to=TensorProto.INT32)),
                                                     column_sums])], name="acc_centred")
        y = graph.op("Mul", [graph.op("Cast", [acc], to=TensorProto.FLOAT),
                             graph.op("Mul", [per_row(scale), scales], name="multiplier")])
        shape = graph.op("Concat", [graph.op("Shape", [x], end=-1), graph.op("Shape", [column_sums])], axis=0)
        return graph.op("Reshape", [y, shape], outputs=outputs)


def emit_quantized_matmul(graph, x: str, weight_kn: np.ndarray, spec: QuantSpec, name: str,
                          outputs: list[str] | None = None, *, per_utterance: bool = False) -> str:
    """Add x @ weight_kn as a quantized node to `graph` (a GraphBuilder); returns the output name."""
    return quantized_weight(graph, weight_kn, spec, name, per_utterance=per_utterance).emit(graph, x, name, outputs)
