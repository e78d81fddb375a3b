"""Device profiles: the runtime settings and hardware facts for one target, read from a TOML file.

    load_profile("x86-avx512")      -> DeviceProfile, a profile shipped in voxtral_edge.devices
    load_profile("my-board.toml")   -> DeviceProfile, any file in the same format
    list_profiles()                 -> every shipped profile, sorted by name

The format (each shipped file cites, in comments, where its numbers come from):

    name = "x86-avx512"               # equals the file's stem
    description = "..."               # one line: SoC/CPU, cores, memory
    [runtime]                         # applied by `--profile` (say, bench, serve; export: plan, max_context)
    threads = 2                       # onnxruntime intra-op threads
    plan = "int4"                     # the quantization plan to export with (`export --profile`)
    steps = 7                         # Euler steps of the flow head
    cfg = 1.2                         # classifier-free guidance
    max_context = 2048                # KV-cache positions (exported, and allocated)
    providers = ["cpu"]               # execution providers, in order of preference (voxtral_edge.sessions)
    chunk_frames = 4                  # frames per streamed chunk (one codec call each)
    codec_threads = 2                 # optional: the codec's own intra-op threads (default: threads)
    codec_pipeline = true             # optional: decode audio on a second thread, beside the backbone
                                      # (pays where the codec has cores of its own, e.g. a little cluster)
    [hardware]                        # estimates for voxtral_edge.estimate, not measurements
    cores = 2                         # the cores the compute figures cover (those the threads run on)
    memory_bandwidth_gbs = 40.0       # sustained, GB/s
    fp32_gflops = 83.0                # sustained fp32 matmul over `cores`
    int8_gops = 166.0                 # sustained int8 matmul over `cores` (MatMulNBits, accuracy_level 4)
    [npu]                             # optional: a Qualcomm Hexagon NPU (voxtral_edge.qnn, estimate_npu)
    soc = "sa8295p"                   # one of voxtral_edge.qnn.SOCS: the HTP the bundle is compiled for
    htp_arch = 68                     # Hexagon architecture (as the SoC's entry in SOCS)
    tops = 30.0                       # the vendor's int8 TOPS figure (marketing peak)
    memory_bandwidth_gbs = 67.0       # peak DRAM bandwidth the NPU shares with the CPU
    reference = "..."                 # a published decoder measurement on this HTP class, named
    reference_tokens_per_s = 3.5      # its tokens per second
    reference_gb_per_token = 1.6      # the weight bytes it reads per token, GB
    reference_memory_bandwidth_gbs = 67.0  # the peak bandwidth of the device it was measured on

Every mistake is a ConfigError that names the file, the key and what is accepted.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from .errors import ConfigError, UnknownNameError, UsageError
from .files import parse_toml
from .manifest import PLAN_NAMES
from .sessions import PROVIDERS, npu_graphs

_POSITIVE_INT, _POSITIVE_NUMBER, _TEXT = "a positive integer", "a positive number", "a non-empty string"
_SOC = "one of sa8295p, sa8255p, sa8775p, x-elite"
_BOOL = "true or false"
_PROVIDER_LIST = f"a non-empty list of {', '.join(PROVIDERS)} or qnn:GRAPHS"
# table -> key -> what the value must be
_SCHEMA = {
    "": {"name": _TEXT, "description": _TEXT, "runtime": "a table", "hardware": "a table", "npu": "a table"},
    "runtime": {"threads": _POSITIVE_INT, "plan": f"one of {', '.join(PLAN_NAMES)}", "steps": _POSITIVE_INT,
                "cfg": _POSITIVE_NUMBER, "max_context": _POSITIVE_INT, "providers": _PROVIDER_LIST,
                "chunk_frames": _POSITIVE_INT, "codec_threads": _POSITIVE_INT, "codec_pipeline": _BOOL},
    "hardware": {"cores": _POSITIVE_INT, "memory_bandwidth_gbs": _POSITIVE_NUMBER, "fp32_gflops": _POSITIVE_NUMBER,
                 "int8_gops": _POSITIVE_NUMBER},
    "npu": {"soc": _SOC, "htp_arch": _POSITIVE_INT, "tops": _POSITIVE_NUMBER, "memory_bandwidth_gbs": _POSITIVE_NUMBER,
            "reference": _TEXT, "reference_tokens_per_s": _POSITIVE_NUMBER, "reference_gb_per_token": _POSITIVE_NUMBER,
            "reference_memory_bandwidth_gbs": _POSITIVE_NUMBER},
}
_OPTIONAL = {"runtime.codec_threads", "runtime.codec_pipeline", "npu"}


@dataclass(frozen=True)
class NpuSpec:
    """A Qualcomm Hexagon NPU ([npu]): what the bundle is compiled for, and the published measurement its
    time estimate rests on (voxtral_edge.estimate_npu)."""

    soc: str
    htp_arch: int
    tops: float
    memory_bandwidth_gbs: float
    reference: str
    reference_tokens_per_s: float
    reference_gb_per_token: float
    reference_memory_bandwidth_gbs: float


@dataclass(frozen=True)
class DeviceProfile:
    """One target: how to run there ([runtime]) and what the hardware can do ([hardware], estimates)."""

    name: str
    description: str
    threads: int
    plan: str
    steps: int
    cfg: float
    max_context: int
    providers: tuple[str, ...]
    chunk_frames: int
    cores: int
    memory_bandwidth_gbs: float
    fp32_gflops: float
    int8_gops: float
    source: str
    codec_threads: int | None = None  # None: the same as threads
    codec_pipeline: bool = False
    npu: NpuSpec | None = None


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
    if accepted == "a table":
        return isinstance(value, dict)
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
    return value in PLAN_NAMES  # plan


def _parse(text: str, source: str, stem: str) -> DeviceProfile:
    data = parse_toml(text, source)
    for table, schema in _SCHEMA.items():
        if table and table not in data and table in _OPTIONAL:
            continue
        values = data[table] if table else data
        prefix = f"{table}." if table else ""
        for key in values:
            if key not in schema:
                raise ConfigError(f"{source}: unknown key '{prefix}{key}' (expected {', '.join(schema)})")
        for key, accepted in schema.items():
            if key not in values and f"{prefix}{key}" in _OPTIONAL:
                continue
            if key not in values:
                raise ConfigError(f"{source}: missing key '{prefix}{key}' ({accepted})")
            if not _valid(values[key], accepted):
                raise ConfigError(f"{source}: '{prefix}{key}' = {values[key]!r:.60} is not {accepted}")
    if data["name"] != stem:
        raise ConfigError(f"{source}: 'name' = {data['name']!r} must equal the file name's stem {stem!r}")
    runtime, hardware = data["runtime"], data["hardware"]
    return DeviceProfile(
        name=data["name"], description=data["description"], threads=runtime["threads"],
        plan=runtime["plan"], steps=runtime["steps"], cfg=float(runtime["cfg"]),
        max_context=runtime["max_context"], providers=tuple(runtime["providers"]),
        chunk_frames=runtime["chunk_frames"], cores=hardware["cores"],
        memory_bandwidth_gbs=float(hardware["memory_bandwidth_gbs"]), fp32_gflops=float(hardware["fp32_gflops"]),
        int8_gops=float(hardware["int8_gops"]), source=source, codec_threads=runtime.get("codec_threads"),
        codec_pipeline=runtime.get("codec_pipeline", False),
        npu=NpuSpec(**{k: float(v) if isinstance(v, int) and k != "htp_arch" else v for k, v in data["npu"].items()})
        if "npu" in data else None)


def _shipped() -> dict:
    """Shipped profile name -> its resource (a Traversable)."""
    folder = resources.files("voxtral_edge.devices")
    return {f.name[:-5]: f for f in folder.iterdir() if f.name.endswith(".toml")}


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
