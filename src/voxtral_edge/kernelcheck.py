"""Known answers for onnxruntime's quantized kernels on this CPU, and the fallback where one is wrong.

Which integer kernel onnxruntime runs depends on the CPU: AVX2 or AVX-512 VNNI on x86, NEON, the dot
product, i8mm or SME (Arm's KleidiAI kernels) on Arm. A wrong kernel raises nothing: the bundle speaks
garbage (measured under qemu 7.2's SME emulation: benchmarks/arm/README.md). So before a graph's session
is made, each quantized kernel family the graph uses solves a few small problems whose answers are
exact, through onnxruntime with the bundle's own session options:

    DynamicQuantizeMatMul  activations integers in [-128, 127], every row holding both ends: per-tensor u8
                           (MLAS) and per-row s8 (KleidiAI) quantization then both have scale 1 and are
                           exact; weights int8 in the quantizer's 7-bit range with one power-of-two scale per
                           column and int8 zero points 0, as `voxtral_edge.quant.matmul` writes them
    MatMulNBits            per bits, block size, accuracy level and zero points: every row spans exactly
                           [-1, 254] (per-row asymmetric scale 1); its first max(block, 32) values are
                           integers in [-1, 127] with 127 in each chunk of min(block, 32) (symmetric scale 1
                           per block of the weight's size or of 32), the rest even integers in [0, 254] with
                           254 in each chunk (scale 2); weight scales powers of two (exact in the fp16 and
                           bf16 that KleidiAI keeps)

Every scheme a correct kernel may use (int8 activations per tensor, per row or per block, or none at
accuracy level 0/1) then computes integer sums times powers of two, which numpy gives exactly here. A
correct kernel is within float rounding of it (measured: at most 1.7e-6 of the output's peak on x86 AVX2
and AVX-512 VNNI, Cortex-A53, and SME under qemu 10); the broken SME path was off by 0.2 to 2.

When a family fails, the graph's families are checked again under each of FALLBACKS' session options,
and the graph opens with the first under which all pass; that is said once per process (which kernel,
which CPU). If none passes, KernelError: better no speech than wrong speech. Verdicts are kept per
process and in this user's cache (beside the verified stamps), per CPU and onnxruntime build.
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from .cache import read_json, user_cache_dir, write_json_atomic
from .errors import KernelError
from .machine import cpu_features
from .onnxfile import Node, graph_nodes, model_bytes

MS_DOMAIN = "com.microsoft"
TOLERANCE = 1e-4  # of the output's peak: correct kernels stay within 2e-6, the broken one is off by 0.2 to 2
SELFTEST_VERSION = 1  # bump when the problems change, so that cached verdicts are made again
ROWS = (1, 5, 33)  # one row (a decode step), a few (the flow head's), more than a kernel's tile (the codec's)
COLUMNS = 40  # not a multiple of any kernel's 16/32/64-column tiles
# Session config entries tried in this order when a family fails with the bundle's own options.
FALLBACKS: tuple[tuple[str, dict[str, str]], ...] = (
    ("the bundle's session options", {}),
    ("KleidiAI disabled", {"mlas.disable_kleidiai": "1"}),
    # never reaches PrePack, hence no KleidiAI dynamic GEMM in any onnxruntime version; but MatMulNBits then
    # dequantizes its whole weight at every call (measured 0.26 -> 226 ms for 3072 x 3072)
    ("weight prepacking disabled (slow)", {"session.disable_prepacking": "1"}),
    ("KleidiAI and weight prepacking disabled (slow)",
     {"mlas.disable_kleidiai": "1", "session.disable_prepacking": "1"}),
)
FALLBACK_KEYS = ("mlas.disable_kleidiai", "session.disable_prepacking")


class KernelWarning(UserWarning):
    """A quantized kernel is wrong on this CPU; the graphs using it were opened with a fallback that passes."""


def machine_fingerprint() -> dict:
    """What a verdict depends on besides its problem: onnxruntime's build, the CPU's features."""
    return {"onnxruntime": ort.__version__, "build": ort.get_build_info() if hasattr(ort, "get_build_info") else "",
            "machine": platform.machine(), "system": platform.system(), "cpu": cpu_features().raw,
            "selftest": SELFTEST_VERSION}


# -- kernel families ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Family:
    """One quantized op type with the attributes that choose onnxruntime's kernel for it."""

    op_type: str  # "DynamicQuantizeMatMul" or "MatMulNBits"
    bits: int = 8
    block_size: int = 0
    accuracy_level: int = 0
    zero_points: bool = False

    @property
    def key(self) -> str:
        if self.op_type == "DynamicQuantizeMatMul":
            return self.op_type
        return (f"MatMulNBits/bits={self.bits}/block={self.block_size}/level={self.accuracy_level}"
                f"/zero_points={int(self.zero_points)}")

    @classmethod
    def from_key(cls, key: str) -> "Family":
        op_type, *parts = key.split("/")
        if not parts:
            return cls(op_type)
        f = dict(part.split("=") for part in parts)
        return cls(op_type, int(f["bits"]), int(f["block"]), int(f["level"]), f["zero_points"] == "1")

    def describe(self) -> str:
        if self.op_type == "DynamicQuantizeMatMul":
            return "DynamicQuantizeMatMul (int8 weights, activations quantized per call)"
        return (f"MatMulNBits ({self.bits}-bit, blocks of {self.block_size}, accuracy level {self.accuracy_level}"
                f"{', zero points' if self.zero_points else ''})")


def node_family(node: Node) -> Family | None:
    """The family of a quantized node (None for a node that is not one)."""
    if node.domain != MS_DOMAIN:
        return None
    if node.op_type == "DynamicQuantizeMatMul":
        return Family("DynamicQuantizeMatMul")
    if node.op_type == "MatMulNBits":
        a = node.attributes
        return Family("MatMulNBits", int(a.get("bits", 4)), int(a.get("block_size", 0)), int(a.get("accuracy_level", 0)),
                      zero_points=len(node.inputs) > 3 and bool(node.inputs[3]))
    return None


def graph_families(path: str | Path) -> tuple[Family, ...]:
    """The quantized kernel families an ONNX file uses (its subgraphs included), sorted by key."""
    return tuple(sorted({f for f in map(node_family, graph_nodes(path)) if f is not None}, key=lambda f: f.key))


# -- the problems ------------------------------------------------------------------------------------
@dataclass
class Problem:
    """A one-node model (bytes), and inputs A with the exact answers (float64)."""

    model: bytes
    cases: list[tuple[np.ndarray, np.ndarray]]


def dqmm_activations(rng: np.random.Generator, rows: int, k: int) -> np.ndarray:
    """Integers in [-128, 127], every row holding -128 and 127."""
    a = rng.integers(-128, 128, size=(rows, k))
    low = rng.integers(0, k, size=rows)
    high = (low + 1 + rng.integers(0, k - 1, size=rows)) % k
    a[np.arange(rows), low], a[np.arange(rows), high] = -128, 127
    return a.astype(np.float32)


def nbits_activations(rng: np.random.Generator, rows: int, k: int, block: int) -> np.ndarray:
    """Rows spanning exactly [-1, 254]: integers in [-1, 127] with 127 in every chunk of min(block, 32) of
    the first max(block, 32) values, even integers in [0, 254] with 254 in every chunk after them."""
    first, chunk = max(block, 32), min(block, 32)
    if k <= first:
        raise ValueError(f"K {k}: a row needs values past its first {first} to span [-1, 254]")
    small = np.arange(k) < first
    a = np.where(small, rng.integers(-1, 127, size=(rows, k)), 2 * rng.integers(0, 127, size=(rows, k)))
    starts = np.arange(0, k, chunk)
    peak = starts + rng.integers(0, 1 << 30, size=(rows, len(starts))) % np.minimum(chunk, k - starts)
    a[np.arange(rows)[:, None], peak] = np.where(small[peak], 127, 254)
    a[np.arange(rows), (peak[:, 0] + 1 + rng.integers(0, chunk - 1, size=rows)) % chunk] = -1  # first chunk
    return a.astype(np.float32)


def pack_nbits(codes: np.ndarray, bits: int, block: int) -> np.ndarray:
    """Codes [N, K] (0 .. 2^bits - 1) in MatMulNBits' layout [N, blocks, block * bits / 8], K zero-padded to
    whole blocks: element i of a block in byte i // (8 / bits) at bit offset bits * (i % (8 / bits))."""
    n, k = codes.shape
    per_byte = 8 // bits
    blocks = -(-k // block)
    codes = np.pad(codes, ((0, 0), (0, blocks * block - k))).astype(np.uint8).reshape(n, blocks, -1, per_byte)
    return _pack_lanes(codes, bits)


def pack_zero_points(zero_points: np.ndarray, bits: int) -> np.ndarray:
    """Zero points [N, blocks] in MatMulNBits' layout [N, ceil(blocks * bits / 8)], in the same bit order."""
    per_byte = 8 // bits
    zp = np.pad(zero_points, ((0, 0), (0, -zero_points.shape[1] % per_byte))).astype(np.uint8)
    return _pack_lanes(zp.reshape(len(zp), -1, per_byte), bits)


def _pack_lanes(values: np.ndarray, bits: int) -> np.ndarray:
    packed = np.zeros(values.shape[:-1], dtype=np.uint8)
    for j in range(values.shape[-1]):
        packed |= values[..., j] << np.uint8(bits * j)
    return packed


def problems(family: Family) -> list[Problem]:
    """The family's fixed problems (seeded: the same on every machine)."""
    rng = np.random.default_rng(28)
    n = COLUMNS
    if family.op_type == "DynamicQuantizeMatMul":
        k = 96
        weight = rng.integers(-63, 64, size=(k, n)).astype(np.int8)  # the quantizer's 7-bit range
        scale = (2.0 ** -rng.integers(4, 9, size=n)).astype(np.float32)
        model = model_bytes([("DynamicQuantizeMatMul", MS_DOMAIN, ["A", "B", "B_scale", "B_zero_point"], ["Y"], {})],
                            {"B": weight, "B_scale": scale, "B_zero_point": np.zeros(n, np.int8)},
                            [("A", np.float32, ("M", k))], [("Y", np.float32, ("M", n))])
        cases = [(a, (a.astype(np.float64) @ weight) * scale) for a in (dqmm_activations(rng, m, k) for m in ROWS)]
        return [Problem(model, cases)]
    if family.op_type != "MatMulNBits":
        raise ValueError(f"no known answers for {family.op_type}")
    bits, block = family.bits, family.block_size
    out = []
    for k in (2 * max(block, 32), 2 * max(block, 32) + 8):  # whole blocks, and a zero-padded last block
        blocks = -(-k // block)
        codes = rng.integers(0, 1 << bits, size=(n, k))
        zero = (rng.integers(0, 1 << bits, size=(n, blocks)) if family.zero_points
                else np.full((n, blocks), 1 << (bits - 1)))
        scales = (2.0 ** -rng.integers(2, 8, size=(n, blocks))).astype(np.float32)
        weight = (codes - np.repeat(zero, block, axis=1)[:, :k]) * np.repeat(scales, block, axis=1)[:, :k]
        initializers = {"B": pack_nbits(codes, bits, block), "scales": scales}
        if family.zero_points:
            initializers["zero_points"] = pack_zero_points(zero, bits)
        model = model_bytes([("MatMulNBits", MS_DOMAIN, ["A", *initializers], ["Y"],
                              {"K": k, "N": n, "bits": bits, "block_size": block,
                               "accuracy_level": family.accuracy_level})],
                            initializers, [("A", np.float32, ("M", k))], [("Y", np.float32, ("M", n))])
        cases = [(a, a.astype(np.float64) @ weight.T) for a in (nbits_activations(rng, m, k, block) for m in ROWS)]
        out.append(Problem(model, cases))
    return out


# -- verdicts ------------------------------------------------------------------------------------------
Config = tuple[tuple[str, str], ...]  # session config entries added to the bundle's options, sorted


@dataclass(frozen=True)
class Verdict:
    """A family's result under some session options: its worst error over the problems."""

    family: Family
    config: Config
    error: float  # max |y - exact| / max |exact| (inf when onnxruntime failed or gave non-finite values)
    detail: str = ""  # the worst problem's shape, or onnxruntime's error

    @property
    def passed(self) -> bool:
        return self.error <= TOLERANCE


Create = Callable[[bytes, ort.SessionOptions, Sequence[str]], object]  # (model, options, providers) -> session


def solve(family: Family, options: Callable[[], ort.SessionOptions], config: dict[str, str], create: Create,
          providers: Sequence[str] = ("cpu",)) -> Verdict:
    """Run the family's problems through `create(model, options, providers)`, the options being the
    bundle's (`options()`) plus the `config` entries."""
    entries: Config = tuple(sorted(config.items()))
    worst, detail = 0.0, ""
    for problem in problems(family):
        opts = options()
        for key, value in entries:
            opts.add_session_config_entry(key, value)
        try:
            session = create(problem.model, opts, providers)
            for a, exact in problem.cases:
                y = np.asarray(session.run(None, {"A": a})[0], dtype=np.float64)
                shape = f"[{a.shape[0]} x {a.shape[1]}] @ [{a.shape[1]} x {exact.shape[1]}]"
                if y.shape != exact.shape:
                    return Verdict(family, entries, float("inf"), f"{shape}: output shape {y.shape}")
                error = float(np.abs(y - exact).max() / np.abs(exact).max()) if np.isfinite(y).all() else float("inf")
                if error > worst or not detail:
                    worst, detail = error, shape
        except Exception as e:  # onnxruntime's own error types: this family cannot run with these options
            return Verdict(family, entries, float("inf"), str(e).splitlines()[0][:200] if str(e) else type(e).__name__)
    return Verdict(family, entries, worst, detail)


class KernelCheck:
    """This process's kernel verdicts (also kept in this user's cache), per family, threads, providers and
    session config; and the warnings already given. `create(model_bytes, options, providers)` makes the
    sessions (`voxtral_edge.sessions.create_session`, or a test's stand-in)."""

    def __init__(self, create: Create, cache_path: Path | None = None):
        self.create = create
        self.cache_path = cache_path  # None: user_cache_dir()/kernels/<machine key>.json
        self.verdicts: dict[str, Verdict] = {}
        self.said: set[tuple[str, str]] = set()  # (family, fallback) already warned of
        self.solved = 0  # families solved in this process (not found in the cache)
        self.seconds = 0.0  # spent solving them
        self._loaded = False

    def path(self) -> Path:
        if self.cache_path is not None:
            return self.cache_path
        key = hashlib.sha256(json.dumps(machine_fingerprint(), sort_keys=True).encode()).hexdigest()[:16]
        return user_cache_dir() / "kernels" / f"{key}.json"

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        record = read_json(self.path())
        if record is None or record.get("format") != "voxtral-edge-kernel-verdicts" \
                or record.get("machine") != machine_fingerprint():
            return
        try:
            for key, v in record["verdicts"].items():
                self.verdicts.setdefault(key, Verdict(Family.from_key(v["family"]), tuple(map(tuple, v["config"])),
                                                      float(v["error"]), str(v.get("detail", ""))))
        except (KeyError, TypeError, ValueError, AttributeError):
            self.verdicts.clear()  # a damaged cache: solved again

    def _save(self) -> None:
        record = {"format": "voxtral-edge-kernel-verdicts", "machine": machine_fingerprint(),
                  "verdicts": {key: {"family": v.family.key, "config": [list(c) for c in v.config],
                                     "error": v.error if np.isfinite(v.error) else 1e300, "detail": v.detail}
                               for key, v in self.verdicts.items()}}
        try:
            write_json_atomic(self.path(), record)
        except OSError:
            pass  # solved again by the next process

    def verdict(self, family: Family, options: Callable[[], ort.SessionOptions], config: dict[str, str],
                threads: int | None, providers: Sequence[str] = ("cpu",), fresh: bool = False) -> Verdict:
        """The family's verdict under the bundle's options plus `config`: remembered, or solved now (`fresh`:
        always solved now)."""
        key = f"{family.key}|threads={threads or 0}|{','.join(providers)}|{json.dumps(sorted(config.items()))}"
        self._load()
        if fresh or key not in self.verdicts:
            start = time.perf_counter()
            self.verdicts[key] = solve(family, options, config, self.create, providers)
            self.seconds += time.perf_counter() - start
            self.solved += 1
            self._save()
        return self.verdicts[key]

    def session_config(self, graph: str, path: Path, families: Sequence[Family],
                       options: Callable[[], ort.SessionOptions], threads: int | None,
                       providers: Sequence[str] = ("cpu",)) -> dict[str, str]:
        """The config entries to add to `graph`'s session options: none when every family passes with the
        bundle's own, else the first FALLBACKS entry under which all pass (warned once per process);
        KernelError naming the file, the kernels, the CPU and what was tried when none does."""
        tried = []
        for label, config in FALLBACKS:
            failed = [v for v in (self.verdict(f, options, config, threads, providers) for f in families) if not v.passed]
            if not failed:
                if config:
                    self._say(graph, tried[0][1], label, config)
                return dict(config)
            tried.append((label, failed))
        attempts = "; ".join(f"with {label}: " + ", ".join(f"{v.family.describe()} off by {v.error:.2g}" for v in failed)
                             for label, failed in tried)
        raise KernelError(f"{path}: onnxruntime {ort.__version__} computes its quantized kernels wrongly on this CPU "
                          f"({cpu_features().describe()}) with every session option tried ({attempts}): refusing to "
                          f"speak wrongly. Use a bundle of another plan (fp32, or one whose graphs use other kernels) "
                          f"or another onnxruntime version; `voxtral-edge doctor` shows each kernel's verdict")

    def _say(self, graph: str, failed: list[Verdict], label: str, config: dict[str, str]) -> None:
        """Warn once per process per wrong family and fallback: the graphs using it all get the fallback."""
        for v in failed:
            if (v.family.key, label) in self.said:
                continue
            self.said.add((v.family.key, label))
            warnings.warn(f"{v.family.describe()} is wrong on this CPU ({cpu_features().describe()}, onnxruntime "
                          f"{ort.__version__}): off by {v.error:.2g} of the exact answer on {v.detail}; {graph} and "
                          f"any other graph using it open with {label} "
                          f"({', '.join(f'{k}={x}' for k, x in config.items())}), which passes", KernelWarning,
                          stacklevel=5)


def family_report(check: KernelCheck, families: dict[Family, list[str]], options: Callable[[], ort.SessionOptions],
                  threads: int | None, providers: Sequence[str] = ("cpu",)) -> list[dict]:
    """Each family solved now (not from the cache), with the bundle's options and, while it fails, with
    each fallback's: {"family", "key", "graphs", "passed", "tried": [{"options", "config", "passed",
    "error", "detail"}, ...]} in `families`' order."""
    rows = []
    for family, graphs in families.items():
        tried = []
        for label, config in FALLBACKS:
            v = check.verdict(family, options, config, threads, providers, fresh=True)
            tried.append({"options": label, "config": dict(config), "passed": v.passed,
                          "error": v.error if np.isfinite(v.error) else None, "detail": v.detail})
            if v.passed:
                break
        rows.append({"family": family.describe(), "key": family.key, "graphs": graphs, "passed": tried[0]["passed"],
                     "tried": tried})
    return rows
