"""A bundle's time per 80 ms frame on a device, from published measurements of that device, as a range.

    graph_work(run)                    -> {graph: Work}: bytes read, weights and rows per call, calls per frame
    device_rates(hw, others)           -> Rates: the device's three efficiencies (low, mid, high) and their basis
    estimate(run, profile, ...)        -> Estimate: frame ms and real-time factor (low, mid, high), each stage,
                                          the dominant stage and its bound, the sources
    estimate_all(run, profiles, ...)   -> [Estimate], one per profile
    kernel_ratios(run, llama)          -> {graph: kappa}: our graphs against llama.cpp's speed on the run's host
    validate(devices)                  -> [dict]: every device with a llama.cpp decode run, predicted from the
                                          other devices only (benchmarks/README.md shows the table)

Why this shape: the machine that ran `bench` must not move a car SoC's estimate (the calibrated roofline of
before issue 24 gave the SA8295P an RTF of 1.75 from an AVX-512 host and 4.2 from an AVX2 host). So a
device's speed comes from the device itself: its datasheet peaks and the llama.cpp runs published for it
(or, without any, for devices of its class); the bench run gives only the work (its bundle's graphs) and,
when llama.cpp was measured beside it, how our kernels compare with llama.cpp's on that host (kappa).

The device (voxtral_edge.profiles: [hardware], [[llama_cpp]]). B = peak memory bandwidth, P(T) = peak int8
ops/s of the T fastest cores. Each llama.cpp run on the device is a lower bound of three efficiencies:

    e_mem = bytes read per token x tg / B        decode's share of the peak bandwidth
    eta   = weights x tg / P(threads)            a 1-row product (GEMV) per peak op
    gamma = 2 x weights x pp / P(threads)        a prompt's many-row product (GEMM) share of peak

A device with runs of its own takes the best of them (+-10 %); one without takes the median over the devices
of its memory class (e_mem) or core family (eta, gamma: x86, Arm with two or four 128-bit pipes), its range
the others' spread widened 15 % and at least x/÷ 1.4 (devices of one class differ by up to 40 % in
the held-out check).

The work, per call of a graph: M bytes read (its files; the backbone also reads the KV cache at POSITION),
W weights (bytes / bytes per weight of its plan), R rows per weight (backbone 1; flow head 4.4: conditional
and unconditional rows of 3 tokens, fewer in its first and last layers; codec 15/4 per frame, its four
stages running 1, 2, 4, 8 positions a frame over about a quarter of the weights each).

    t_mem = M / (e_mem B);  t_gemv = W / (eta P);  t_gemm = 2 W R / (gamma P)
    fast = max(t_mem, t_gemv, t_gemm)                       the rows ride on one pass over the weights
    slow = max(t_mem, t_gemv + t_gemm (R - 1) / R)          each extra row costs its own compute
Both bracket onnxruntime's MatMulNBits measured at 1, 2, 4 and 8 rows on the AVX-512 host. The compute terms
are multiplied by kappa (our graph / llama.cpp's kernels on the same host), the memory term by 1.0..1.25 (we
stream 0.625 bytes a weight with fp32 scales where Q4_0 streams 0.5625, and reach at best its share of the
bus). A frame is one backbone step, `steps` flow-head calls and 1/chunk_frames of a codec call; with the
profile's codec_pipeline the codec runs on the next cores beside the other two and a frame takes the longer.
The low end takes every figure at its fast end, the high end at its slow end.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import resources

from .errors import ConfigError, UsageError
from .files import parse_toml
from .manifest import GRAPHS
from .profiles import DeviceProfile, Hardware, reference_devices

POSITION = 256  # KV-cache position assumed for a frame's attention reads (mid-utterance)
FLOW_ROWS = 4.4  # rows each flow-head weight multiplies per Euler step (full-size architecture)
CODEC_ROWS_PER_FRAME = 15 / 4
OWN_SPREAD = 1.10  # +-10 % around a device's own figure
PRIOR_WIDEN, PRIOR_MIN_SPREAD = 1.15, 1.40
KAPPA_MEMORY = (1.0, 1.1, 1.25)  # fast, mid, slow
KAPPA_WIDEN, KAPPA_DISAGREE = 1.15, 0.15
FRAME_MS = 80.0  # 1 / 12.5 Hz
# Graph sizes of the full-size bundles (voxtral-edge 0.1.0, commit 79dfa99), for bench runs saved before
# they recorded them: {plan: {graph: (bytes of .onnx + .onnx.data, bytes per weight)}}.
FULL_SIZE = {
    "int4": {"backbone_step": (1925824096, 0.625), "flow_head": (369915886, 1.0), "codec_decoder": (206952794, 1.0)},
    "int4-all": {"backbone_step": (1925824096, 0.625), "flow_head": (196492564, 0.53125),
                 "codec_decoder": (206952794, 1.0)},
}
FULL_SIZE_GB = {"int4": 3.411, "int4-all": 3.238}
FULL_SIZE_KV_BYTES = 2 * 26 * 8 * 128 * 4  # per position: K and V, 26 layers, 8 KV heads of 128, fp32
STAGE_NAMES = {"backbone_step": "backbone", "flow_head": "flow head", "codec_decoder": "codec"}


@dataclass(frozen=True)
class Work:
    """One call of a graph: bytes read, weights multiplied, rows per weight; and its calls per frame."""

    bytes: float
    weights: float
    rows: float
    calls_per_frame: float


@dataclass(frozen=True)
class Span:
    """A figure as (fast, mid, slow) ends, fast first, and where it comes from."""

    fast: float
    mid: float
    slow: float
    basis: str


@dataclass(frozen=True)
class Rates:
    e_mem: Span
    eta: Span
    gamma: Span


@dataclass
class Estimate:
    device: str
    plan: str
    steps: int
    chunk_frames: int
    threads: int
    low_ms: float
    mid_ms: float
    high_ms: float
    stages: dict  # {stage: {"low_ms", "mid_ms", "high_ms", "bound"}}, ms per frame (flow head: all its steps)
    dominant: str
    bound: str
    codec_beside: bool
    sources: list = field(default_factory=list)
    notes: list = field(default_factory=list)

    @property
    def rtf_low(self) -> float:
        return self.low_ms / FRAME_MS

    @property
    def rtf_mid(self) -> float:
        return self.mid_ms / FRAME_MS

    @property
    def rtf_high(self) -> float:
        return self.high_ms / FRAME_MS

    def as_dict(self) -> dict:
        return {"device": self.device, "plan": self.plan, "steps": self.steps, "chunk_frames": self.chunk_frames,
                "threads": self.threads, "low_ms": round(self.low_ms, 2), "mid_ms": round(self.mid_ms, 2),
                "high_ms": round(self.high_ms, 2), "rtf_low": round(self.rtf_low, 3), "rtf": round(self.rtf_mid, 3),
                "rtf_high": round(self.rtf_high, 3), "dominant": self.dominant, "bound": self.bound,
                "codec_beside": self.codec_beside,
                "stages": {k: {m: (round(v, 2) if isinstance(v, float) else v) for m, v in s.items()}
                           for k, s in self.stages.items()},
                "sources": self.sources, "notes": self.notes}


# -- the work ----------------------------------------------------------------------------------------------

def kv_bytes_per_position(run) -> float:
    """The float32 KV cache's bytes per position of `run`'s bundle (a run saved before it was recorded: full size)."""
    return run.kv_bytes_per_position if run.graphs else FULL_SIZE_KV_BYTES


def graph_work(run) -> dict[str, Work]:
    """Each graph's work per call, from a bench run (voxtral_edge.bench.BenchRun): the graph sizes it
    recorded, or for a run saved before they were recorded, those of the full-size bundle of its plan."""
    graphs, kv = run.graphs, kv_bytes_per_position(run)
    if not graphs:
        if run.plan not in FULL_SIZE:
            raise UsageError(f"{run.source}: this run ({run.plan}) records no graph sizes and is not of a plan whose "
                             f"full-size graphs are known ({', '.join(FULL_SIZE)}): run `voxtral-edge bench --json` "
                             f"again with this version, which records them")
        if run.size_gb and abs(run.size_gb / FULL_SIZE_GB[run.plan] - 1) > 0.05:
            raise UsageError(f"{run.source}: the {run.plan} bundle measured there is {run.size_gb:.2f} GB, not the "
                             f"full-size {FULL_SIZE_GB[run.plan]:.2f} GB whose graph sizes are known: run "
                             f"`voxtral-edge bench --json` again with this version, which records them")
        graphs = {g: {"bytes": b, "bytes_per_weight": w} for g, (b, w) in FULL_SIZE[run.plan].items()}
    missing = [g for g in GRAPHS if g not in graphs]
    if missing:
        raise UsageError(f"{run.source}: the run records no size for {', '.join(missing)}")
    chunk = run.chunk_frames
    rows = {"backbone_step": 1.0, "flow_head": FLOW_ROWS, "codec_decoder": CODEC_ROWS_PER_FRAME * chunk}
    calls = {"backbone_step": 1.0, "flow_head": float(run.steps), "codec_decoder": 1 / chunk}
    work = {}
    for g in GRAPHS:
        size, per_weight = float(graphs[g]["bytes"]), float(graphs[g]["bytes_per_weight"])
        extra = kv * POSITION if g == "backbone_step" else 0.0
        work[g] = Work(bytes=size + extra, weights=size / per_weight, rows=rows[g], calls_per_frame=calls[g])
    return work


# -- the device --------------------------------------------------------------------------------------------

def core_family(hw: Hardware) -> str:
    """The family whose 1-row and many-row efficiencies a device without runs borrows."""
    if hw.isa.startswith("x86"):
        return "x86"
    return "arm-4x128" if max(c.int8_ops_per_cycle for c in hw.clusters) >= 128 else "arm-2x128"


def peak_ops(hw: Hardware, threads: int, skip: int = 0) -> float:
    """Peak int8 ops/s of `threads` cores, the fastest first after skipping `skip` of them."""
    ops = hw.core_ops()[skip:skip + threads]
    if not ops:
        raise ConfigError(f"{hw.source}: {threads} threads after {skip} busy cores, but the device has "
                          f"{hw.cores} cores")
    return sum(ops)


def efficiencies(hw: Hardware, *, as_prior: bool = False) -> tuple[float | None, float | None, float | None]:
    """(e_mem, eta, gamma), the best each of the device's llama.cpp runs shows; None without a run. As a prior
    for other devices a run marked regime = "compute" says nothing of the bus and one marked "memory" nothing
    of the cores."""
    e_mem = eta = gamma = None
    B = hw.memory_bandwidth_gbs * 1e9
    for r in hw.llama_cpp:
        P = peak_ops(hw, min(r.threads, hw.cores))
        if r.test == "tg":
            if not as_prior or r.regime != "compute":
                e_mem = max(e_mem or 0.0, r.read_bytes * r.tokens_per_s / B)
            if not as_prior or r.regime != "memory":
                eta = max(eta or 0.0, r.params * r.tokens_per_s / P)
        else:
            gamma = max(gamma or 0.0, 2 * r.params * r.tokens_per_s / P)
    return e_mem, eta, gamma


def _prior(values: list[tuple[str, float]], label: str) -> Span:
    mid = statistics.median(v for _, v in values)
    low = min(min(v for _, v in values) / PRIOR_WIDEN, mid / PRIOR_MIN_SPREAD)
    high = max(max(v for _, v in values) * PRIOR_WIDEN, mid * PRIOR_MIN_SPREAD)
    names = ", ".join(n for n, _ in values)
    return Span(high, mid, low, f"assumed: median of {label} ({names})")


def device_rates(hw: Hardware, others: Iterable[Hardware]) -> Rates:
    """The device's efficiencies: its own runs where it has them, else its class's (see the module)."""
    own = efficiencies(hw)
    others = [o for o in others if o.name != hw.name and o.clusters]
    spans = []
    groups = (("memory class " + hw.memory_class, lambda o: o.memory_class == hw.memory_class),
              ("core family " + core_family(hw), lambda o: core_family(o) == core_family(hw)),
              ("core family " + core_family(hw), lambda o: core_family(o) == core_family(hw)))
    for i, (label, same) in enumerate(groups):
        if own[i]:
            runs = [r for r in hw.llama_cpp if (r.test == "pp") == (i == 2)]
            cited = "; ".join(sorted({f"{r.title} ({r.date})" for r in runs}))
            status = "measured" if all(r.status == "measured" for r in runs) else "published"
            spans.append(Span(own[i] * OWN_SPREAD, own[i], own[i] / OWN_SPREAD, f"{status}: {cited}"))
            continue
        candidates = [(o, efficiencies(o, as_prior=True)[i]) for o in others]
        candidates = [(o, v) for o, v in candidates if v]
        same_class = [(o.name, v) for o, v in candidates if same(o)]
        if same_class:
            spans.append(_prior(same_class, label))
        elif candidates:
            spans.append(_prior([(o.name, v) for o, v in candidates], f"all devices (none of {label} has a run)"))
        else:
            raise ConfigError(f"{hw.source}: no llama.cpp run on this device or any other to take its efficiency from")
    return Rates(*spans)


# -- our kernels against llama.cpp's -----------------------------------------------------------------------

def _kappa_table() -> list[dict]:
    f = resources.files("voxtral_edge.devices") / "kernels" / "ours-vs-llama-cpp.toml"
    data = parse_toml(f.read_text(encoding="utf-8"), str(f))
    entries = data.get("kappa", [])
    for i, e in enumerate(entries):
        for key in ("isa", "plan", "status", "title", *GRAPHS):
            if key not in e:
                raise ConfigError(f"{f}: kappa[{i}] lacks '{key}'")
    return entries


def host_call_ms(work: Work, decode_ms: float, prefill_tps: float, llama_weights: float) -> tuple[float, float]:
    """(fast, slow) ms of one call at llama.cpp's own speed on a host: 1 row at llama_weights / decode_ms,
    many rows at llama_weights x prefill_tps (no memory term: the host's decode already includes it)."""
    g1 = llama_weights / (decode_ms / 1e3)
    gg = llama_weights * prefill_tps
    W, R = work.weights, work.rows
    return max(W / g1, W * R / gg) * 1e3, (W / g1 + W * (R - 1) / gg) * 1e3


def kernel_ratios(run, llama: dict) -> dict[str, float]:
    """kappa per graph: the run's measured ms per call / a llama.cpp-speed call on the same host (the middle of
    host_call_ms). `llama`: decode_ms_per_token, prefill_tokens_per_s and weights of the yardstick
    (benchmarks/llama_cpp_baseline.py --json, measured on the same machine)."""
    work = graph_work(run)
    weights = float(llama.get("weights", LLAMA_BACKBONE_WEIGHTS))
    measured = run.graph_ms()
    out = {}
    for g, ms in measured.items():
        fast, slow = host_call_ms(work[g], llama["decode_ms_per_token"], llama["prefill_tokens_per_s"], weights)
        out[g] = ms / ((fast + slow) / 2)
    return out


LLAMA_BACKBONE_WEIGHTS = 1.73e9 / (18 / 32)  # the yardstick's Q4_0 backbone shape: 1.73 GB at 18 bytes per 32


def kappas_for(isa: str, plan: str, fresh: dict | None = None, fresh_isa: str | None = None,
               source: str = "") -> tuple[dict[str, Span], list[str]]:
    """kappa per graph for a target of `isa` running `plan`: measured on a host of that instruction set family
    if one was (`fresh`: this run's own, measured beside llama.cpp), else the span of the stored measurements
    of every family (assumed). A fresh ratio that differs from the stored one of its family by more than
    KAPPA_DISAGREE does not move the middle: the range widens to cover both, and a note says so."""
    table = [e for e in _kappa_table() if e["plan"] == plan] or _kappa_table()
    notes = []
    out = {}
    for g in GRAPHS:
        same = [e[g] for e in table if e["isa"] == isa]
        titles = "; ".join(sorted({e["title"] for e in table if e["isa"] == isa}))
        if fresh and fresh_isa == isa and not same:
            v = fresh[g]
            out[g] = Span(v / OWN_SPREAD, v, v * OWN_SPREAD, f"measured: this run ({source})")
        elif fresh and fresh_isa == isa and abs(fresh[g] / statistics.median(same) - 1) > KAPPA_DISAGREE:
            v = statistics.median(same)
            lo, hi = min(fresh[g], *same) / OWN_SPREAD, max(fresh[g], *same) * OWN_SPREAD
            notes.append(f"{STAGE_NAMES[g]}: this run's kernel ratio {fresh[g]:.2f} differs from the stored {v:.2f} "
                         f"for {isa} by more than {KAPPA_DISAGREE:.0%} (a loaded or different machine?): the range "
                         f"covers both, the middle stays the stored one")
            out[g] = Span(lo, v, hi, f"measured on {isa}: {titles}; and this run ({source}), which disagrees")
        elif fresh and fresh_isa == isa:
            v = fresh[g]
            out[g] = Span(v / OWN_SPREAD, v, v * OWN_SPREAD, f"measured: this run ({source}), as the stored runs")
        elif same:
            v = statistics.median(same)
            out[g] = Span(v / OWN_SPREAD, v, v * OWN_SPREAD, f"measured on {isa}: {titles}")
        else:
            values = [e[g] for e in table]
            lo, hi = min(values) / KAPPA_WIDEN, max(values) * KAPPA_WIDEN
            isas = ", ".join(sorted({e["isa"] for e in table}))
            out[g] = Span(lo, math.sqrt(lo * hi), hi, f"assumed: no {isa} host measured; the span of {isas}")
    return out, notes


# -- the estimate ------------------------------------------------------------------------------------------

def _call_ms(hw: Hardware, rates: Rates, work: Work, threads: int, skip: int, kappa: Span | None,
             end: str) -> tuple[float, str]:
    """(ms, bound) of one call at the `end` (fast | mid | slow) of every figure; kappa None: llama.cpp's own."""
    i = {"fast": 0, "mid": 1, "slow": 2}[end]
    pick = lambda s: (s.fast, s.mid, s.slow)[i]  # noqa: E731
    B, P = hw.memory_bandwidth_gbs * 1e9, peak_ops(hw, threads, skip)
    t_mem = work.bytes / (pick(rates.e_mem) * B) * (KAPPA_MEMORY[i] if kappa else 1.0)
    kappa = kappa or Span(1.0, 1.0, 1.0, "llama.cpp itself")
    k = (kappa.fast, kappa.mid, kappa.slow)[i]
    t_gemv = work.weights / (pick(rates.eta) * P) * k
    t_gemm = 2 * work.weights * work.rows / (pick(rates.gamma) * P) * k
    fast_c = max(t_gemv, t_gemm)
    slow_c = t_gemv + t_gemm * (work.rows - 1) / work.rows
    t_c = (fast_c, (fast_c + slow_c) / 2, slow_c)[i]
    return max(t_mem, t_c) * 1e3, "memory" if t_mem >= t_c else "compute"


def estimate(run, profile: DeviceProfile, others: Iterable[Hardware], *, fresh_kappa: dict | None = None,
             fresh_isa: str | None = None) -> Estimate:
    """The frame time of `run`'s bundle, plan, steps and chunk size on `profile`'s device at its threads."""
    hw = profile.hardware
    if not hw.clusters:
        raise ConfigError(f"{profile.source}: the profile has the [hardware] keys of before issue 24 (cores, "
                          f"fp32_gflops, int8_gops); the estimate needs memory, memory_bandwidth_gbs, memory_class, "
                          f"isa, clusters and [[hardware.source]] (see voxtral_edge.profiles)")
    work = graph_work(run)
    rates = device_rates(hw, others)
    kappa, notes = kappas_for(hw.isa, run.plan, fresh_kappa, fresh_isa, run.source)
    threads = min(profile.threads, hw.cores)
    beside = profile.codec_pipeline and hw.cores > threads
    codec_threads = profile.codec_threads or threads
    codec_skip = threads if beside else 0
    codec_threads = min(codec_threads, hw.cores - codec_skip)
    stages, ends = {}, {"fast": {}, "mid": {}, "slow": {}}
    for g, w in work.items():
        th, skip = (codec_threads, codec_skip) if g == "codec_decoder" else (threads, 0)
        for end in ends:
            ms, bound = _call_ms(hw, rates, w, th, skip, kappa[g], end)
            ends[end][g] = (ms * w.calls_per_frame, bound)
        stages[STAGE_NAMES[g]] = {"low_ms": ends["fast"][g][0], "mid_ms": ends["mid"][g][0],
                                  "high_ms": ends["slow"][g][0], "bound": ends["mid"][g][1]}

    def frame(end: str) -> float:
        t = {g: ms for g, (ms, _) in ends[end].items()}
        main = t["backbone_step"] + t["flow_head"]
        return max(main, t["codec_decoder"]) if beside else main + t["codec_decoder"]

    dominant = max(stages, key=lambda s: stages[s]["mid_ms"])
    sources = [f"peak bandwidth {hw.memory_bandwidth_gbs:g} GB/s, cores: "
               + "; ".join(f"{s.status}: {s.title}" for s in hw.sources),
               f"bandwidth share e_mem {rates.e_mem.mid:.3f}: {rates.e_mem.basis}",
               f"1-row efficiency eta {rates.eta.mid:.3f}: {rates.eta.basis}",
               f"many-row efficiency gamma {rates.gamma.mid:.3f}: {rates.gamma.basis}",
               *(f"kernel ratio {STAGE_NAMES[g]} {kappa[g].mid:.2f}: {kappa[g].basis}" for g in GRAPHS),
               f"work: {run.plan} bundle from {run.source}"]
    return Estimate(device=profile.name, plan=run.plan, steps=run.steps, chunk_frames=run.chunk_frames,
                    threads=threads, low_ms=frame("fast"), mid_ms=frame("mid"), high_ms=frame("slow"), stages=stages,
                    dominant=dominant, bound=stages[dominant]["bound"], codec_beside=beside, sources=sources,
                    notes=notes)


def estimate_all(run, profiles: Iterable[DeviceProfile], *, fresh_kappa: dict | None = None,
                 fresh_isa: str | None = None) -> list[Estimate]:
    """estimate() on every profile, each borrowing from all the other profiles and the reference devices."""
    profiles = list(profiles)
    from .profiles import list_profiles

    devices = {p.hardware.name: p.hardware for p in list_profiles()}
    devices.update({p.hardware.name: p.hardware for p in profiles})
    devices.update({h.name: h for h in reference_devices()})
    return [estimate(run, p, devices.values(), fresh_kappa=fresh_kappa, fresh_isa=fresh_isa) for p in profiles]


# -- the held-out check ------------------------------------------------------------------------------------

def validate(devices: Iterable[Hardware]) -> list[dict]:
    """Every device with a llama.cpp decode run, at its most threads: the decode rate the model predicts from
    the other devices only (its own runs removed) against the published one; error = predicted / published - 1."""
    devices = [d for d in devices if d.clusters]
    rows = []
    for hw in devices:
        tg = [r for r in hw.llama_cpp if r.test == "tg"]
        if not tg:
            continue
        top = max(r.threads for r in tg)
        held_out = Hardware(**{**hw.__dict__, "llama_cpp": ()})
        rates = device_rates(held_out, [d for d in devices if d.name != hw.name])
        for r in tg:
            if r.threads != top:
                continue
            work = Work(bytes=r.read_bytes, weights=r.params, rows=1.0, calls_per_frame=1.0)
            threads = min(r.threads, hw.cores)
            ms = {end: _call_ms(held_out, rates, work, threads, 0, None, end) for end in ("fast", "mid", "slow")}
            pred = {end: 1e3 / t for end, (t, _) in ms.items()}
            mid_bound = ms["mid"][1]
            rows.append({"device": hw.name, "model": r.model, "threads": r.threads, "published": r.tokens_per_s,
                         "predicted": pred["mid"], "low": pred["slow"], "high": pred["fast"],
                         "error": pred["mid"] / r.tokens_per_s - 1, "bound": mid_bound, "status": r.status,
                         "source": f"{r.title} ({r.date})", "url": r.url,
                         "basis": {"e_mem": rates.e_mem.basis, "eta": rates.eta.basis}})
    return rows


# -- reading the yardstick and reporting ---------------------------------------------------------------------

def read_llama(path) -> dict:
    """llama.cpp's decode ms/token and prompt tokens/s on the backbone shape, from benchmarks/llama_cpp_baseline.py
    (its --json lines, or the result dict benchmarks/run.py keeps as WORK/llama.json) or run.py's results.json."""
    import json
    from pathlib import Path

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"{path}: cannot read the llama.cpp figures ({e})") from None
    try:
        records = [json.loads(text)]
    except json.JSONDecodeError:
        try:
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as e:
            raise UsageError(f"{path}: neither JSON nor JSON lines ({e.msg})") from None
    if len(records) == 1 and isinstance(records[0], dict) and "llama_cpp" in records[0]:
        records = [records[0]["llama_cpp"] or {}]
    out = {}
    for r in records:
        if not isinstance(r, dict):
            continue
        if "decode_ms_per_token" in r:
            out.update(decode_ms_per_token=r["decode_ms_per_token"], prefill_tokens_per_s=r["prefill_tokens_per_s"])
            if "gguf_bytes" in r:
                out["weights"] = r["gguf_bytes"] / (18 / 32)
        elif str(r.get("test", "")).startswith("tg"):
            out["decode_ms_per_token"] = r["median"]
        elif str(r.get("test", "")).startswith("pp"):
            out["prefill_tokens_per_s"] = r["median"]
        if "gguf_bytes" in r:
            out["weights"] = r["gguf_bytes"] / (18 / 32)
        for key in ("cpu", "date", "llama_cpp_version", "threads"):
            if key in r:
                out.setdefault(key, r[key])
    missing = [k for k in ("decode_ms_per_token", "prefill_tokens_per_s") if k not in out]
    if missing:
        raise UsageError(f"{path}: no {' or '.join(missing)} (expected the output of benchmarks/llama_cpp_baseline.py "
                         f"or benchmarks/run.py's results.json)")
    return out


def to_markdown(estimates: list[Estimate], *, sources: bool = False) -> str:
    lines = ["| device | plan | steps | threads | frame ms (low..high) | RTF (low..high) | real time | dominant stage, "
             "bound | backbone ms | flow head ms | codec ms |",
             "| --- | --- | ---: | ---: | ---: | ---: | --- | --- | ---: | ---: | ---: |"]
    for e in estimates:
        verdict = "yes" if e.rtf_high <= 1 else "no" if e.rtf_low > 1 else "maybe"
        st = e.stages
        lines.append(
            f"| {e.device} | {e.plan} | {e.steps} | {e.threads or 'NPU'} | "
            f"{e.mid_ms:.0f} ({e.low_ms:.0f}..{e.high_ms:.0f}) | "
            f"{e.rtf_mid:.2f} ({e.rtf_low:.2f}..{e.rtf_high:.2f}) | {verdict} | {e.dominant}, {e.bound} | "
            f"{st['backbone']['mid_ms']:.1f} | {st['flow head']['mid_ms']:.1f} | "
            f"{st['codec']['mid_ms']:.1f}{' (beside)' if e.codec_beside else ''} |")
    notes = [f"- {e.device}, {e.plan}: {n}" for e in estimates for n in e.notes]
    if notes:
        lines += ["", *notes]
    if sources:
        for e in estimates:
            lines += ["", f"{e.device} ({e.plan} @ {e.steps}):", *(f"- {s}" for s in e.sources)]
    return "\n".join(lines)


def plot(estimates: list[Estimate], path) -> str:
    """Frame time by device and plan, the range as a bar and the middle as a tick, with the 80 ms line."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError("--plot needs matplotlib: pip install matplotlib") from None
    labels = [f"{e.device} {e.plan}@{e.steps}" for e in estimates]
    fig, ax = plt.subplots(figsize=(9, 0.32 * len(estimates) + 1.2))
    y = list(range(len(estimates)))[::-1]
    ax.barh(y, [e.high_ms - e.low_ms for e in estimates], left=[e.low_ms for e in estimates], color="tab:blue",
            alpha=0.4, label="range (low..high)")
    ax.plot([e.mid_ms for e in estimates], y, "|", color="tab:blue", markersize=12, label="middle")
    ax.axvline(FRAME_MS, color="k", linestyle="--", label="real time (80 ms)")
    ax.set_yticks(y, labels, fontsize=8)
    ax.set_xscale("log")
    ax.set_xlim(min(FRAME_MS, *(e.low_ms for e in estimates)) / 1.3,
                max(FRAME_MS, *(e.high_ms for e in estimates)) * 1.3)
    ax.set_xlabel("ms per 80 ms frame (log scale)")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)
