"""Device profiles: the runtime settings and hardware facts for one target, read from a TOML file.

    load_profile("x86-avx512")      -> DeviceProfile, a profile shipped in voxtral_edge.devices
    load_profile("my-board.toml")   -> DeviceProfile, any file in the same format
    list_profiles()                 -> every shipped profile, sorted by name
    reference_devices()             -> Hardware of the devices kept only for their published llama.cpp runs
                                       (devices/reference/*.toml: no [runtime]), for voxtral_edge.estimate

The format. Every figure of [hardware] and [[llama_cpp]] says whether it was measured (on this project's
machines), published (a datasheet or someone else's measurement, with its address) or assumed (our reading,
with the reason), in [[hardware.source]] and in each run's `status`:

    name = "x86-avx512"               # equals the file's stem
    description = "..."               # one line: SoC/CPU, cores, memory
    [runtime]                         # applied by `--profile` (say, bench, serve; export: plan, max_context)
    threads = 2                       # onnxruntime intra-op threads (the fastest cores first)
    plan = "int4"                     # the quantization plan to export with (`export --profile`)
    steps = 7                         # Euler steps of the flow head
    cfg = 1.2                         # classifier-free guidance
    max_context = 2048                # KV-cache positions (exported, and allocated)
    providers = ["cpu"]               # execution providers, in order of preference (voxtral_edge.sessions)
    chunk_frames = 4                  # frames per streamed chunk (one codec call each)
    codec_threads = 2                 # optional: the codec's own intra-op threads (default: threads)
    codec_pipeline = true             # optional: decode audio on a second thread, beside the backbone, on the
                                      # next cores (pays where the codec has cores of its own)
    batch = 4                         # optional: utterances stepped together (default 1; `--batch`)
    [hardware]                        # what voxtral_edge.estimate reads
    memory = "DDR5-4800, ..."         # what the bandwidth figure is
    memory_bandwidth_gbs = 40.0       # peak GB/s (datasheet: transfers/s x bus width)
    memory_class = "x86-vm"           # devices whose share of that peak it borrows when it has no run of its
                                      # own: arm-soc, arm-soc-old, apple, jetson, x86-laptop, x86-vm
    isa = "x86-avx512vnni"            # instruction set family: which measured kernel ratios apply
    clusters = [                      # the cores, fastest first; per core peak = ghz x ops per cycle
      { count = 2, core = "Zen 4", ghz = 2.6, int8_ops_per_cycle = 128, fp32_flops_per_cycle = 32 },
    ]
    [[hardware.source]]               # one per figure or group of figures, as many as needed
    status = "measured"               # measured | published | assumed
    what = "cores, clock"             # which figures
    title = "..."                     # the document; url and date when it has them
    [npu]                             # optional: a Qualcomm Hexagon NPU (voxtral_edge.qnn, voxtral_edge.estimate_npu)
    soc = "sa8295p"                   # one of voxtral_edge.qnn.SOCS: what its bundles are compiled for
    htp_arch = 68                     # the Hexagon (HTP) architecture
    tops = 40.0                       # optional: the vendor's AI TOPS figure (not used by the estimate)
    [[npu.source]]                    # as [[hardware.source]]
    [[npu.run]]                       # a published decoder measurement on this HTP class; the first one
    model = "Llama-v3.2-3B-Instruct w4"  # prices the NPU estimate (ms per GB read)
    read_bytes = 1.61e9               # weight bytes read per token
    tokens_per_s = 3.523
    memory_bandwidth_gbs = 67.0       # the peak DRAM bandwidth of the device measured
    device = "SA8295P ADP"
    status = "published"              # measured | published | assumed; title, url, date, note as above
    title = "..."
    [[llama_cpp]]                     # optional: llama.cpp runs on this device (llama-bench or the like)
    test = "tg"                       # tg: decode tokens/s; pp: prompt tokens/s
    model = "Llama-2-7B Q4_0"
    params = 6.74e9                   # weights multiplied per token
    read_bytes = 3.75e9               # bytes read per decoded token (file less an untied input embedding)
    threads = 6
    tokens_per_s = 20.5
    status = "published"              # measured | published | assumed
    title = "..."                     # url, date, build, note and regime are optional; regime = "compute" when
                                      # the run was limited by its cores (fewer threads than a faster run),
                                      # "memory" when more threads were no faster

Profiles of the format before issue 24 ([hardware] cores, fp32_gflops, int8_gops) still load for their
[runtime]; the estimate refuses them, naming the keys it needs. Every mistake is a ConfigError that names
the file, the key and what is accepted.

A new section (the NPU's, say) is a key of _SCHEMA[""] (with "an array of tables" or "a table"), its table's
own entry in _SCHEMA (and its optional keys in _OPTIONAL), a dataclass, and a field of Hardware or
DeviceProfile filled in _hardware() or _parse(); every figure in it carries `status` and a source as above.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from .errors import ConfigError, UnknownNameError
from .files import parse_toml
from .manifest import PLAN_NAMES
from .errors import UsageError
from .sessions import PROVIDERS, npu_graphs

STATUSES = ("measured", "published", "assumed")
MEMORY_CLASSES = ("arm-soc", "arm-soc-old", "apple", "jetson", "x86-laptop", "x86-vm")
ISAS = ("arm-v8.0", "arm-dotprod", "arm-i8mm", "x86-avx2", "x86-avxvnni", "x86-avx512vnni")
TESTS = ("tg", "pp")
LEGACY_HARDWARE = ("cores", "fp32_gflops", "int8_gops")

_POSITIVE_INT, _POSITIVE_NUMBER, _TEXT = "a positive integer", "a positive number", "a non-empty string"
_BOOL, _ANY_TEXT = "true or false", "a string"
_PROVIDER_LIST = f"a non-empty list of {', '.join(PROVIDERS)} or qnn:GRAPHS"
_SOC = "one of sa8295p, sa8255p, sa8775p, x-elite, 8-elite"
_PLAN = f"one of {', '.join(PLAN_NAMES)}"


def _one_of(values) -> str:
    return f"one of {', '.join(values)}"


# table -> key -> what the value must be; a key in _OPTIONAL may be left out
_SCHEMA = {
    "": {"name": _TEXT, "description": _TEXT, "runtime": "a table", "hardware": "a table",
         "llama_cpp": "an array of tables", "npu": "a table"},
    "runtime": {"threads": _POSITIVE_INT, "plan": _PLAN, "steps": _POSITIVE_INT, "cfg": _POSITIVE_NUMBER,
                "max_context": _POSITIVE_INT, "providers": _PROVIDER_LIST, "chunk_frames": _POSITIVE_INT,
                "codec_threads": _POSITIVE_INT, "codec_pipeline": _BOOL, "batch": _POSITIVE_INT},
    "hardware": {"memory": _TEXT, "memory_bandwidth_gbs": _POSITIVE_NUMBER, "memory_class": _one_of(MEMORY_CLASSES),
                 "isa": _one_of(ISAS), "clusters": "an array of tables", "source": "an array of tables",
                 **{key: _POSITIVE_NUMBER for key in LEGACY_HARDWARE}},
    "hardware.clusters": {"count": _POSITIVE_INT, "core": _TEXT, "ghz": _POSITIVE_NUMBER,
                          "int8_ops_per_cycle": _POSITIVE_INT, "fp32_flops_per_cycle": _POSITIVE_INT},
    "hardware.source": {"status": _one_of(STATUSES), "what": _TEXT, "title": _TEXT, "url": _ANY_TEXT,
                        "date": _ANY_TEXT},
    "llama_cpp": {"test": _one_of(TESTS), "model": _TEXT, "params": _POSITIVE_NUMBER, "read_bytes": _POSITIVE_NUMBER,
                  "file_bytes": _POSITIVE_NUMBER, "threads": _POSITIVE_INT, "tokens_per_s": _POSITIVE_NUMBER,
                  "status": _one_of(STATUSES), "title": _TEXT, "url": _ANY_TEXT, "date": _ANY_TEXT,
                  "build": _ANY_TEXT, "note": _ANY_TEXT, "regime": _one_of(("compute", "memory"))},
    "npu": {"soc": _SOC, "htp_arch": _POSITIVE_INT, "tops": _POSITIVE_NUMBER, "source": "an array of tables",
            "run": "an array of tables"},
    "npu.source": {"status": _one_of(STATUSES), "what": _TEXT, "title": _TEXT, "url": _ANY_TEXT, "date": _ANY_TEXT},
    "npu.run": {"model": _TEXT, "read_bytes": _POSITIVE_NUMBER, "tokens_per_s": _POSITIVE_NUMBER,
                "memory_bandwidth_gbs": _POSITIVE_NUMBER, "device": _TEXT, "status": _one_of(STATUSES),
                "title": _TEXT, "url": _ANY_TEXT, "date": _ANY_TEXT, "note": _ANY_TEXT},
}
_OPTIONAL = {"llama_cpp", "runtime.codec_threads", "runtime.codec_pipeline", "runtime.batch", "hardware.memory",
             "hardware.memory_class", "hardware.isa", "hardware.clusters", "hardware.source",
             *(f"hardware.{key}" for key in LEGACY_HARDWARE), "hardware.source.url", "hardware.source.date",
             *(f"llama_cpp.{key}" for key in ("file_bytes", "url", "date", "build", "note", "regime")),
             "npu", "npu.tops", "npu.source.url", "npu.source.date", "npu.run.url", "npu.run.date", "npu.run.note"}
_NEW_HARDWARE = ("memory", "memory_class", "isa", "clusters", "source")


@dataclass(frozen=True)
class Cluster:
    """`count` identical cores."""

    count: int
    core: str
    ghz: float
    int8_ops_per_cycle: int
    fp32_flops_per_cycle: int


@dataclass(frozen=True)
class Source:
    """Where some figures of a profile come from."""

    status: str  # measured | published | assumed
    what: str
    title: str
    url: str = ""
    date: str = ""


@dataclass(frozen=True)
class LlamaRun:
    """One llama.cpp measurement on a device: decode (tg) or prompt (pp) tokens/s of a model at `threads`."""

    test: str
    model: str
    params: float
    read_bytes: float
    threads: int
    tokens_per_s: float
    status: str
    title: str
    url: str = ""
    date: str = ""
    build: str = ""
    note: str = ""
    regime: str = ""


@dataclass(frozen=True)
class NpuRun:
    """A decoder's published decode speed on a Qualcomm NPU: what the NPU estimate is priced from."""

    model: str
    read_bytes: float
    tokens_per_s: float
    memory_bandwidth_gbs: float  # peak DRAM bandwidth of the device measured
    device: str
    status: str
    title: str
    url: str = ""
    date: str = ""
    note: str = ""


@dataclass(frozen=True)
class Npu:
    """A Qualcomm Hexagon NPU ([npu]): the SoC its bundles are compiled for and the runs its estimate uses."""

    soc: str
    htp_arch: int
    tops: float | None  # the vendor's AI TOPS figure, where one is published (the estimate does not use it)
    sources: tuple[Source, ...]
    runs: tuple[NpuRun, ...]


@dataclass(frozen=True)
class Hardware:
    """A device's hardware facts and the llama.cpp runs published for it."""

    name: str
    description: str
    memory: str
    memory_bandwidth_gbs: float
    memory_class: str
    isa: str
    clusters: tuple[Cluster, ...]
    sources: tuple[Source, ...]
    llama_cpp: tuple[LlamaRun, ...]
    source: str  # the file it was read from

    @property
    def cores(self) -> int:
        return sum(c.count for c in self.clusters)

    def core_ops(self) -> list[float]:
        """Peak int8 ops/s of each core, fastest first."""
        per = [c.ghz * 1e9 * c.int8_ops_per_cycle for c in self.clusters for _ in range(c.count)]
        return sorted(per, reverse=True)


@dataclass(frozen=True)
class DeviceProfile:
    """One target: how to run there ([runtime]) and what the hardware is ([hardware], [[llama_cpp]])."""

    name: str
    description: str
    threads: int
    plan: str
    steps: int
    cfg: float
    max_context: int
    providers: tuple[str, ...]
    chunk_frames: int
    hardware: Hardware
    source: str
    codec_threads: int | None = None  # None: the same as threads
    codec_pipeline: bool = False
    batch: int = 1  # utterances stepped together (Synthesizer.open's batch)
    npu: Npu | None = None

    @property
    def memory_bandwidth_gbs(self) -> float:
        return self.hardware.memory_bandwidth_gbs


def _valid(value, accepted: str) -> bool:
    if accepted == _BOOL:
        return isinstance(value, bool)
    if isinstance(value, bool):  # TOML true/false would pass as the integers 1 and 0
        return False
    if accepted == _POSITIVE_INT:
        return isinstance(value, int) and value > 0
    if accepted == _POSITIVE_NUMBER:
        return isinstance(value, (int, float)) and math.isfinite(value) and value > 0
    if accepted == _TEXT:
        return isinstance(value, str) and bool(value.strip())
    if accepted == _ANY_TEXT:
        return isinstance(value, str)
    if accepted == "a table":
        return isinstance(value, dict)
    if accepted == "an array of tables":
        return isinstance(value, list) and all(isinstance(v, dict) for v in value)
    if accepted == _PROVIDER_LIST:
        if not (isinstance(value, list) and value and all(isinstance(p, str) for p in value)):
            return False
        try:
            npu_graphs(value)
        except UsageError:
            return False
        return True
    if accepted == _SOC:
        from .qnn import SOCS

        return value in SOCS
    if accepted == _PLAN:
        return value in PLAN_NAMES
    return isinstance(value, str) and value in accepted[len("one of "):].split(", ")


def _check(values: dict, table: str, source: str, where: str) -> None:
    """Every key of `values` known to `table`'s schema, every required one present, every value valid."""
    schema = _SCHEMA[table]
    for key in values:
        if key not in schema:
            raise ConfigError(f"{source}: unknown key '{where}{key}' (expected {', '.join(schema)})")
    for key, accepted in schema.items():
        if key not in values:
            if f"{table + '.' if table else ''}{key}" in _OPTIONAL:
                continue
            raise ConfigError(f"{source}: missing key '{where}{key}' ({accepted})")
        if not _valid(values[key], accepted):
            raise ConfigError(f"{source}: '{where}{key}' = {values[key]!r:.60} is not {accepted}")


def _hardware(data: dict, source: str) -> Hardware:
    hardware = data["hardware"]
    _check(hardware, "hardware", source, "hardware.")
    legacy = [k for k in LEGACY_HARDWARE if k in hardware]
    new = [k for k in _NEW_HARDWARE if k in hardware]
    if legacy and new:
        raise ConfigError(f"{source}: [hardware] mixes the old keys ({', '.join(legacy)}) with the new ones "
                          f"({', '.join(new)}); keep only memory, memory_bandwidth_gbs, memory_class, isa, clusters "
                          f"and [[hardware.source]]")
    if not legacy:
        for key in _NEW_HARDWARE:
            if key not in hardware:
                raise ConfigError(f"{source}: missing key 'hardware.{key}' ({_SCHEMA['hardware'][key]})")
        if not hardware["clusters"] or not hardware["source"]:
            raise ConfigError(f"{source}: 'hardware.clusters' and [[hardware.source]] need at least one entry each")
    clusters, sources = [], []
    for i, c in enumerate(hardware.get("clusters", [])):
        _check(c, "hardware.clusters", source, f"hardware.clusters[{i}].")
        clusters.append(Cluster(**c))
    for i, s in enumerate(hardware.get("source", [])):
        _check(s, "hardware.source", source, f"hardware.source[{i}].")
        sources.append(Source(**s))
    runs = []
    for i, r in enumerate(data.get("llama_cpp", [])):
        _check(r, "llama_cpp", source, f"llama_cpp[{i}].")
        runs.append(LlamaRun(**{k: v for k, v in r.items() if k != "file_bytes"}))
    return Hardware(name=data["name"], description=data["description"], memory=hardware.get("memory", ""),
                    memory_bandwidth_gbs=float(hardware["memory_bandwidth_gbs"]),
                    memory_class=hardware.get("memory_class", ""), isa=hardware.get("isa", ""),
                    clusters=tuple(clusters), sources=tuple(sources), llama_cpp=tuple(runs), source=source)


def _npu(data: dict, source: str) -> Npu | None:
    if "npu" not in data:
        return None
    npu = data["npu"]
    _check(npu, "npu", source, "npu.")
    sources = []
    for i, s in enumerate(npu["source"]):
        _check(s, "npu.source", source, f"npu.source[{i}].")
        sources.append(Source(**s))
    runs = []
    for i, r in enumerate(npu["run"]):
        _check(r, "npu.run", source, f"npu.run[{i}].")
        runs.append(NpuRun(**r))
    if not sources or not runs:
        raise ConfigError(f"{source}: [npu] needs at least one [[npu.source]] and one [[npu.run]]")
    return Npu(soc=npu["soc"], htp_arch=npu["htp_arch"], tops=float(npu["tops"]) if "tops" in npu else None,
               sources=tuple(sources), runs=tuple(runs))


def _top(data: dict, source: str, stem: str, *, runtime: bool) -> None:
    for key in data:
        if key not in _SCHEMA[""] or (key == "runtime" and not runtime):
            expected = [k for k in _SCHEMA[""] if runtime or k != "runtime"]
            raise ConfigError(f"{source}: unknown key '{key}' (expected {', '.join(expected)})")
    for key in ("name", "description", "hardware", *(("runtime",) if runtime else ())):
        if key not in data:
            raise ConfigError(f"{source}: missing key '{key}' ({_SCHEMA[''][key]})")
        if not _valid(data[key], _SCHEMA[""][key]):
            raise ConfigError(f"{source}: '{key}' = {data[key]!r:.60} is not {_SCHEMA[''][key]}")
    if "npu" in data and not _valid(data["npu"], "a table"):
        raise ConfigError(f"{source}: 'npu' is not a table ([npu])")
    if "llama_cpp" in data and not _valid(data["llama_cpp"], "an array of tables"):
        raise ConfigError(f"{source}: 'llama_cpp' is not an array of tables ([[llama_cpp]] entries)")
    if data["name"] != stem:
        raise ConfigError(f"{source}: 'name' = {data['name']!r} must equal the file name's stem {stem!r}")


def _parse(text: str, source: str, stem: str) -> DeviceProfile:
    data = parse_toml(text, source)
    _top(data, source, stem, runtime=True)
    runtime = data["runtime"]
    _check(runtime, "runtime", source, "runtime.")
    return DeviceProfile(
        name=data["name"], description=data["description"], threads=runtime["threads"],
        plan=runtime["plan"], steps=runtime["steps"], cfg=float(runtime["cfg"]),
        max_context=runtime["max_context"], providers=tuple(runtime["providers"]),
        chunk_frames=runtime["chunk_frames"], hardware=_hardware(data, source), source=source,
        codec_threads=runtime.get("codec_threads"), codec_pipeline=runtime.get("codec_pipeline", False),
        batch=runtime.get("batch", 1), npu=_npu(data, source))


def _parse_reference(text: str, source: str, stem: str) -> Hardware:
    data = parse_toml(text, source)
    _top(data, source, stem, runtime=False)
    hardware = _hardware(data, source)
    if not hardware.clusters:
        raise ConfigError(f"{source}: a reference device needs the [hardware] keys memory, memory_class, isa, "
                          f"clusters and [[hardware.source]]")
    return hardware


def _shipped(folder: str = "") -> dict:
    """Shipped name -> its resource (a Traversable), in voxtral_edge.devices or one of its folders."""
    root = resources.files("voxtral_edge.devices")
    root = root / folder if folder else root
    return {f.name[:-5]: f for f in root.iterdir() if f.name.endswith(".toml")}


def load_profile(name_or_path: str | os.PathLike) -> DeviceProfile:
    """A shipped profile by name ("x86-avx512"), or a profile file by path."""
    text = str(name_or_path)
    shipped = _shipped()
    if text in shipped:
        return _parse(shipped[text].read_text(encoding="utf-8"), str(shipped[text]), text)
    path = Path(text)
    if path.suffix != ".toml" and not path.exists() and os.sep not in text and "/" not in text:
        raise UnknownNameError(f"unknown device profile {text!r}: shipped profiles are {', '.join(sorted(shipped))}; "
                               f"or give the path of a .toml profile")
    try:
        content = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read the profile ({e})") from None
    return _parse(content, str(path), path.stem)


def list_profiles() -> list[DeviceProfile]:
    """Every shipped profile, sorted by name."""
    return [load_profile(name) for name in sorted(_shipped())]


def reference_devices() -> list[Hardware]:
    """The devices shipped only for their published llama.cpp runs (devices/reference/), sorted by name."""
    return [_parse_reference(f.read_text(encoding="utf-8"), str(f), name)
            for name, f in sorted(_shipped("reference").items())]
