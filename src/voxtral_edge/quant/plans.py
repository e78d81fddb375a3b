"""Precision plans: per graph, which matmuls are quantized and how. Named plans or a TOML file.

    fp32           nothing quantized
    int8           backbone and codec 8-bit (blocks of 128), flow head dynamic int8
    int4           backbone 4-bit (blocks of 32), flow head dynamic int8, codec dynamic int8: the quality default
    int4-all       backbone 4-bit (blocks of 32), flow head 4-bit (blocks of 128), codec dynamic int8
    int4-fast      int4 with the backbone in blocks of 128: less memory to read, faster prefill
    int4-all-fast  int4-all with the backbone in blocks of 128
    w8a16          for a Qualcomm NPU (HTP): every graph in the NPU form, 8-bit weights, 16-bit activations
    w4a16          the same with the backbone's weights 4-bit
    int4-w8a16     the backbone int4 on the CPU, flow head and codec w8a16 on the NPU (an NPU too slow for
                   the backbone, such as the SA8295P's v68)

The codec's matmuls are dynamic int8 in every int4 plan: on the `small` checkpoint its audio from the
same codes keeps cosine 0.999998 / SNR 55 dB / log-mel distance 0.01 dB against fp32; at full size it
takes 0.39 GB less memory (its convolutions stay fp32) and about half the time per frame (8-bit
MatMulNBits in blocks of 128: SNR 62 dB but 1.6x slower than dynamic int8; measured in
benchmarks/README.md).

In every named plan but fp32 the backbone's semantic head (8320 x 3072, 100 MB in fp32, read every
frame) is 8-bit in blocks of 32; a TOML plan keeps it fp32 unless it says otherwise (`override`, below).

Blocks of 128 for the flow head and dynamic int8 cost almost nothing in quality and are much faster
on its 6-row matmuls (measured: benchmarks/README.md); the backbone's block size trades quality
(blocks of 32) against speed (blocks of 128).

A TOML plan names a table per graph (backbone_step, flow_head, codec_decoder); a graph left out stays
fp32:

    name = "my-plan"
    [backbone_step]
    method = "nbits"          # or "dynamic-int8", or "fp32"
    bits = 4                  # 4 or 8 (nbits)
    block_size = 32           # 16, 32, 64, 128 or 256 (nbits)
    symmetric = true
    accuracy_level = 4        # 0 (as the weights) .. 4 (int8 compute); see onnxruntime's MatMulNBits
    skip = ["semantic_head/*"]  # weight names (fnmatch patterns) to keep in fp32
    [backbone_step.override."semantic_head/*"]  # these weights another way (same keys as the graph's)
    method = "dynamic-int8"

`method = "qdq"` (with `bits` 8 or 4) exports that graph in the NPU form and quantizes it statically
(voxtral_edge.quant.htp); the other keys do not apply to it.

Weight names are the graph's: `layers.3/wqkv`, `layers.3/feed_forward/w2`, `semantic_head/logits`,
`acoustic_transformer.layers.0/attention/wq`, `tokens/input_projection`, ...
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError, UnknownNameError
from ..files import parse_toml
from ..manifest import GRAPHS
from .matmul import QuantSpec

METHODS = ("nbits", "dynamic-int8", "qdq", "fp32")
BLOCK_SIZES = (16, 32, 64, 128, 256)
# The semantic head picks the semantic code by argmax: it stays fp32 unless a plan says otherwise.
DEFAULT_SKIP = ("semantic_head/*",)
SEMANTIC_HEAD = "semantic_head/*"


@dataclass(frozen=True)
class GraphPlan:
    """How one graph's matmuls are quantized; `spec` None keeps it fp32."""

    spec: QuantSpec | None = None
    skip: tuple[str, ...] = DEFAULT_SKIP
    overrides: tuple[tuple[str, QuantSpec], ...] = ()  # (weight-name pattern, spec): the first match wins

    def spec_for(self, weight_name: str) -> QuantSpec | None:
        for pattern, spec in self.overrides:
            if fnmatch.fnmatchcase(weight_name, pattern):
                return spec
        if self.spec is None or any(fnmatch.fnmatchcase(weight_name, p) for p in self.skip):
            return None
        return self.spec

    @property
    def precision(self) -> str:
        return "fp32" if self.spec is None else self.spec.precision

    @property
    def npu(self) -> bool:
        """Whether the graph is exported in the NPU form and statically quantized (method qdq)."""
        return self.spec is not None and self.spec.method == "qdq"

    @property
    def quantizes(self) -> bool:
        """Whether any weight of the graph is quantized."""
        return self.spec is not None or bool(self.overrides)

    def describe(self) -> dict:
        s = self.spec
        if s is None:
            d = {"method": "fp32"}
        else:
            d = {"method": s.method, "bits": 8 if s.method == "dynamic-int8" else s.bits, "skip": list(self.skip)}
        if s is not None and s.method == "nbits":
            d.update(block_size=s.block_size, symmetric=s.symmetric, accuracy_level=s.accuracy_level)
        if s is not None and s.method == "qdq":
            d = {"method": "qdq", "bits": s.bits}
        if self.overrides:
            d["override"] = {pattern: GraphPlan(spec, ()).describe() for pattern, spec in self.overrides}
        return d


@dataclass(frozen=True)
class Plan:
    name: str
    graphs: dict[str, GraphPlan] = field(default_factory=dict)

    def graph(self, name: str) -> GraphPlan:
        return self.graphs.get(name, GraphPlan())

    def describe(self) -> dict:
        return {"plan": self.name, "graphs": {g: self.graph(g).describe() for g in GRAPHS}}

    @property
    def npu_graphs(self) -> tuple[str, ...]:
        """The graphs exported in the NPU form."""
        return tuple(g for g in GRAPHS if self.graph(g).npu)


def _nbits(bits: int, block: int) -> GraphPlan:
    return GraphPlan(QuantSpec("nbits", bits, block, True, 4))


def _backbone(bits: int, block: int) -> GraphPlan:
    """The backbone with its semantic head (8320 x 3072, 100 MB in fp32, read every frame) in 8 bits, blocks
    of 32: on the small checkpoint the same semantic codes as fp32 (teacher-forced 100%; blocks of 128:
    97.5%, dynamic int8 with one scale per column: 95%; see benchmarks/README.md)."""
    return GraphPlan(QuantSpec("nbits", bits, block, True, 4), skip=(), overrides=((SEMANTIC_HEAD, _INT8_HEAD),))


_INT8_HEAD = QuantSpec("nbits", 8, 32, True, 4)
_W8A16, _W4A16 = GraphPlan(QuantSpec("qdq", 8)), GraphPlan(QuantSpec("qdq", 4))
_DYNAMIC = GraphPlan(QuantSpec("dynamic-int8"))
_CODEC = _DYNAMIC
NAMED_PLANS = {
    "fp32": Plan("fp32"),
    "int8": Plan("int8", {"backbone_step": _backbone(8, 128), "flow_head": _DYNAMIC, "codec_decoder": _nbits(8, 128)}),
    "int4": Plan("int4", {"backbone_step": _backbone(4, 32), "flow_head": _DYNAMIC, "codec_decoder": _CODEC}),
    "int4-all": Plan("int4-all", {"backbone_step": _backbone(4, 32), "flow_head": _nbits(4, 128),
                                  "codec_decoder": _CODEC}),
    "int4-fast": Plan("int4-fast", {"backbone_step": _backbone(4, 128), "flow_head": _DYNAMIC,
                                    "codec_decoder": _CODEC}),
    "int4-all-fast": Plan("int4-all-fast", {"backbone_step": _backbone(4, 128), "flow_head": _nbits(4, 128),
                                            "codec_decoder": _CODEC}),
    "w8a16": Plan("w8a16", {"backbone_step": _W8A16, "flow_head": _W8A16, "codec_decoder": _W8A16}),
    "w4a16": Plan("w4a16", {"backbone_step": _W4A16, "flow_head": _W8A16, "codec_decoder": _W8A16}),
    "int4-w8a16": Plan("int4-w8a16", {"backbone_step": _backbone(4, 32), "flow_head": _W8A16,
                                      "codec_decoder": _W8A16}),
}


def load_plan(plan: str | Path) -> Plan:
    """A named plan, or a TOML plan file; every mistake is a ConfigError naming the file and key."""
    if str(plan) in NAMED_PLANS:
        return NAMED_PLANS[str(plan)]
    path = Path(plan)
    if not path.is_file():
        raise UnknownNameError(f"--plan {plan}: neither a named plan ({', '.join(NAMED_PLANS)}) nor a TOML file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not a valid TOML plan ({e})") from None
    data = parse_toml(text, str(path), "TOML plan")
    unknown = set(data) - set(GRAPHS) - {"name"}
    if unknown:
        raise ConfigError(f"{path}: unknown table or key {sorted(unknown)} (expected 'name' and tables "
                          f"{', '.join(GRAPHS)})")
    name = data.get("name", path.stem)
    if not isinstance(name, str):
        raise ConfigError(f"{path}: 'name' must be a string")
    return Plan(name, {g: _graph_plan(path, g, data[g]) for g in GRAPHS if g in data})


def _graph_plan(path: Path, graph: str, table) -> GraphPlan:
    def fail(key: str, message: str):
        raise ConfigError(f"{path}: [{graph}] {key}: {message}")

    if not isinstance(table, dict):
        fail("", "must be a table")
    known = {"method", "bits", "block_size", "symmetric", "accuracy_level", "skip", "override"}
    for key in set(table) - known:
        fail(key, f"unknown key (expected {', '.join(sorted(known))})")
    method = table.get("method", "nbits")
    if method not in METHODS:
        fail("method", f"{method!r} is not one of {', '.join(METHODS)}")
    bits = table.get("bits", 8 if method in ("dynamic-int8", "qdq") else 4)
    if bits not in ((8,) if method == "dynamic-int8" else (4, 8)) or isinstance(bits, bool):
        fail("bits", f"{bits!r} is not supported by {method} (4 or 8 for nbits and qdq, 8 for dynamic-int8)")
    block = table.get("block_size", 32)
    if block not in BLOCK_SIZES or isinstance(block, bool):
        fail("block_size", f"{block!r} is not one of {', '.join(map(str, BLOCK_SIZES))}")
    symmetric = table.get("symmetric", True)
    if not isinstance(symmetric, bool):
        fail("symmetric", f"must be true or false, found {symmetric!r}")
    level = table.get("accuracy_level", 4)
    if level not in range(5) or isinstance(level, bool):
        fail("accuracy_level", f"must be 0..4, found {level!r}")
    skip = table.get("skip", list(DEFAULT_SKIP))
    if not isinstance(skip, list) or not all(isinstance(s, str) for s in skip):
        fail("skip", "must be a list of weight-name patterns")
    if method == "fp32":  # only the overridden weights are quantized
        return GraphPlan(None, (), _overrides(path, graph, table, fail))
    if method == "qdq":  # the whole graph, statically: skip and override do not apply
        if {"skip", "override"} & set(table):
            fail("skip" if "skip" in table else "override", 'does not apply to method "qdq" (the whole graph is '
                 'quantized statically)')
        return GraphPlan(QuantSpec("qdq", bits), ())
    return GraphPlan(QuantSpec(method, bits, block, symmetric, level), tuple(skip),
                     _overrides(path, graph, table, fail))


def _overrides(path: Path, graph: str, table: dict, fail) -> tuple[tuple[str, QuantSpec], ...]:
    override = table.get("override", {})
    if not isinstance(override, dict) or not all(isinstance(v, dict) for v in override.values()):
        fail("override", 'must be tables named by weight-name pattern, e.g. [backbone_step.override."semantic_head/*"]')
    overrides = []
    for pattern, sub in override.items():
        if {"skip", "override"} & set(sub):
            fail(f"override.{pattern}", "takes method, bits, block_size, symmetric and accuracy_level only")
        spec = _graph_plan(path, f"{graph}.override.{pattern}", sub).spec
        if spec is None:
            fail(f"override.{pattern}", 'method "fp32": list the pattern in skip instead')
        overrides.append((pattern, spec))
    return tuple(overrides)
