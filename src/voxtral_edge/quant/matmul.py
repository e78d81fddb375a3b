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
built graph) go through `quantized_weight`.
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


def quantized_weight(graph, weight_kn: np.ndarray, spec: QuantSpec, name: str) -> tuple[str, list[str], dict]:
    """Write x @ weight_kn's quantized weight into `graph` (a GraphBuilder); returns (op_type, the node's
    inputs after x, its attributes): one weight can then serve several nodes."""
    k, n = weight_kn.shape
    if spec.method == "dynamic-int8":
        q = quantize_int8_columns(weight_kn)
        return "DynamicQuantizeMatMul", [graph.weight(f"{name}_int8", q.values), graph.weight(f"{name}_scale", q.scales),
                                         graph.weight(f"{name}_zero_point", np.zeros(n, dtype=np.int8))], {}
    q = quantize_nbits(weight_kn, spec)
    inputs = [graph.weight(f"{name}_q{spec.bits}", q.packed), graph.weight(f"{name}_scales", q.scales)]
    if q.zero_points is not None:
        inputs.append(graph.weight(f"{name}_zero_points", q.zero_points))
    attrs = {"accuracy_level": spec.accuracy_level} if spec.accuracy_level else {}
    return "MatMulNBits", inputs, dict(K=k, N=n, bits=spec.bits, block_size=spec.block_size, **attrs)


def emit_quantized_matmul(graph, x: str, weight_kn: np.ndarray, spec: QuantSpec, name: str,
                          outputs: list[str] | None = None) -> str:
    """Add x @ weight_kn as a quantized node to `graph` (a GraphBuilder); returns the output name."""
    op_type, inputs, attrs = quantized_weight(graph, weight_kn, spec, name)
    return graph.op(op_type, [x, *inputs], domain=MS_DOMAIN, name=name, outputs=outputs, **attrs)
