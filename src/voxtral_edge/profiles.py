"""Device profiles: the runtime settings and hardware facts for one target, read from a TOML file.

    load_profile("x86-avx512")      -> DeviceProfile, a profile shipped in voxtral_edge.devices
    load_profile("my-board.toml")   -> DeviceProfile, any file in the same format
    list_profiles()                 -> every shipped profile, sorted by name

The format (each shipped file cites, in comments, where its numbers come from):

    name = "x86-avx512"               # equals the file's stem
    description = "..."               # one line: SoC/CPU, cores, memory
    [runtime]
    threads = 2                       # onnxruntime intra-op threads
    precision = "int4"                # the plan to export with: fp32, int8, int4, int4-all
    steps = 7                         # Euler steps of the flow head
    cfg = 1.2                         # classifier-free guidance
    max_context = 2048                # KV-cache positions
    execution_providers = ["cpu"]     # in order of preference: cpu, cuda, qnn, xnnpack, coreml
    stream_chunk_frames = 4           # frames per codec call when streaming
    codec_threads = 2                 # optional: the codec's own intra-op threads (default: threads)
    codec_pipeline = true             # optional: decode audio on a second thread, beside the backbone
                                      # (pays where the codec has cores of its own, e.g. a little cluster)
    [hardware]                        # estimates for voxtral_edge.estimate, not measurements
    cores = 2                         # the cores the compute figures cover (those the threads run on)
    memory_bandwidth_gbs = 40.0       # sustained, GB/s
    fp32_gflops = 83.0                # sustained fp32 matmul over `cores`
    int8_gops = 166.0                 # sustained int8 matmul over `cores` (MatMulNBits, accuracy_level 4)

Every mistake is a ConfigError that names the file, the key and what is accepted.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from .errors import ConfigError, UnknownNameError
from .manifest import PLAN_NAMES

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

# Short names in profiles -> onnxruntime's provider names.
PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "qnn": "QNNExecutionProvider",
             "xnnpack": "XnnpackExecutionProvider", "coreml": "CoreMLExecutionProvider"}
PRECISIONS = PLAN_NAMES

_POSITIVE_INT, _POSITIVE_NUMBER, _TEXT = "a positive integer", "a positive number", "a non-empty string"
_BOOL = "true or false"
_PROVIDER_LIST = f"a non-empty list of {', '.join(PROVIDERS)}"
# table -> key -> what the value must be
_SCHEMA = {
    "": {"name": _TEXT, "description": _TEXT, "runtime": "a table", "hardware": "a table"},
    "runtime": {"threads": _POSITIVE_INT, "precision": f"one of {', '.join(PRECISIONS)}", "steps": _POSITIVE_INT,
                "cfg": _POSITIVE_NUMBER, "max_context": _POSITIVE_INT, "execution_providers": _PROVIDER_LIST,
                "stream_chunk_frames": _POSITIVE_INT, "codec_threads": _POSITIVE_INT, "codec_pipeline": _BOOL},
    "hardware": {"cores": _POSITIVE_INT, "memory_bandwidth_gbs": _POSITIVE_NUMBER, "fp32_gflops": _POSITIVE_NUMBER,
                 "int8_gops": _POSITIVE_NUMBER},
}
_OPTIONAL = {"runtime.codec_threads", "runtime.codec_pipeline"}


@dataclass(frozen=True)
class DeviceProfile:
    """One target: how to run there ([runtime]) and what the hardware can do ([hardware], estimates)."""

    name: str
    description: str
    threads: int
    precision: str
    steps: int
    cfg: float
    max_context: int
    execution_providers: tuple[str, ...]
    stream_chunk_frames: int
    cores: int
    memory_bandwidth_gbs: float
    fp32_gflops: float
    int8_gops: float
    source: str
    codec_threads: int | None = None  # None: the same as threads
    codec_pipeline: bool = False

    @property
    def onnxruntime_providers(self) -> list[str]:
        """The execution providers as onnxruntime names, in order of preference."""
        return [PROVIDERS[p] for p in self.execution_providers]


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
        return isinstance(value, list) and bool(value) and all(p in PROVIDERS for p in value)
    return value in PRECISIONS  # precision


def _parse(text: str, source: str, stem: str) -> DeviceProfile:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source}: not valid TOML ({e})") from None
    for table, schema in _SCHEMA.items():
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
        precision=runtime["precision"], steps=runtime["steps"], cfg=float(runtime["cfg"]),
        max_context=runtime["max_context"], execution_providers=tuple(runtime["execution_providers"]),
        stream_chunk_frames=runtime["stream_chunk_frames"], cores=hardware["cores"],
        memory_bandwidth_gbs=float(hardware["memory_bandwidth_gbs"]), fp32_gflops=float(hardware["fp32_gflops"]),
        int8_gops=float(hardware["int8_gops"]), source=source, codec_threads=runtime.get("codec_threads"),
        codec_pipeline=runtime.get("codec_pipeline", False))


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
