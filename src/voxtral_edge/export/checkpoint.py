"""The released checkpoint folder, read lazily and checked against `params.json`.

    params.json                  -> ModelConfig
    consolidated.safetensors     -> SafetensorsFile (header validated here, tensors read by name
                                    through the safetensors package; BF16 arrives as ml_dtypes.bfloat16)
    tekken.json                  -> voxtral_edge.tekken.Tekken
    voice_embedding/<name>.pt    -> voxtral_edge.export.torchfile.load_tensor (restricted reader)

`SafetensorsWriter` writes the same format tensor by tensor, so that a full-size checkpoint never
has to sit in memory.
"""

from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path

import ml_dtypes
import numpy as np

from ..errors import CheckpointError

from .config import ModelConfig

# Only floating weights exist in the checkpoint; anything else is refused by name.
DTYPES = {"BF16": np.dtype(ml_dtypes.bfloat16), "F16": np.dtype(np.float16), "F32": np.dtype(np.float32)}
OTHER_SAFETENSORS_DTYPES = {"F64", "I64", "I32", "I16", "I8", "U64", "U32", "U16", "U8", "BOOL",
                            "F8_E4M3", "F8_E5M2", "E8M0", "F6_E2M3", "F6_E3M2", "F4"}
MAX_HEADER_BYTES = 100 * 2**20
WEIGHTS_FILE = "consolidated.safetensors"
PARAMS_FILE = "params.json"
TEKKEN_FILE = "tekken.json"
VOICE_DIR = "voice_embedding"


class SafetensorsFile:
    """One safetensors file: its header is parsed and checked on open, tensors are read by name."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            size = self.path.stat().st_size
            with open(self.path, "rb") as f:
                head = f.read(8)
                n = struct.unpack("<Q", head)[0] if len(head) == 8 else None
                raw = f.read(n) if n is not None and 0 < n <= min(size - 8, MAX_HEADER_BYTES) else b""
        except OSError as e:
            raise CheckpointError(f"{self.path}: cannot read ({e.strerror or e})") from None
        if n is None:
            raise CheckpointError(f"{self.path}: {size} bytes is too short for a safetensors header")
        if n > MAX_HEADER_BYTES:
            raise CheckpointError(f"{self.path}: header length {n} bytes is over the {MAX_HEADER_BYTES}-byte limit "
                                  f"(not a safetensors file, or a damaged one)")
        if n == 0 or n > size - 8:
            raise CheckpointError(f"{self.path}: header length {n} does not fit in the file's {size} bytes "
                                  f"(truncated, or not a safetensors file)")
        self.header = self._parse_header(raw)
        self.data_offset = 8 + n
        data_size = size - self.data_offset
        spans = sorted((info["data_offsets"][0], info["data_offsets"][1], name) for name, info in self.header.items())
        end = 0
        for begin, stop, name in spans:
            if begin < end:
                raise CheckpointError(f"{self.path}: tensor '{name}' at bytes {begin}..{stop} overlaps the tensor "
                                      f"before it (which ends at {end}): the header's offsets are wrong")
            end = stop
        if end > data_size:
            last = spans[-1][2]
            raise CheckpointError(f"{self.path}: truncated: tensor '{last}' ends at byte {end} of the data section "
                                  f"but the file holds only {data_size} bytes of data")

    def _parse_header(self, raw: bytes) -> dict[str, dict]:
        def no_duplicates(pairs):
            keys = [k for k, _ in pairs]
            if len(keys) != len(set(keys)):
                dup = next(k for k in keys if keys.count(k) > 1)
                raise CheckpointError(f"{self.path}: header lists tensor '{dup}' twice")
            return dict(pairs)

        try:
            header = json.loads(raw.decode("utf-8"), object_pairs_hook=no_duplicates)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{self.path}: header is not valid UTF-8 JSON ({e})") from None
        if not isinstance(header, dict):
            raise CheckpointError(f"{self.path}: header must be a JSON object")
        meta = header.pop("__metadata__", {})
        if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
            raise CheckpointError(f"{self.path}: __metadata__ must map strings to strings")
        for name, info in header.items():
            where = f"{self.path}: tensor '{name}'"
            if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
                raise CheckpointError(f"{where}: header entry must have exactly dtype, shape and data_offsets")
            dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
            if dtype not in DTYPES:
                kind = "unsupported" if dtype in OTHER_SAFETENSORS_DTYPES else "unknown"
                raise CheckpointError(f"{where}: {kind} dtype {dtype!r} (expected one of {', '.join(DTYPES)})")
            if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
                raise CheckpointError(f"{where}: shape must be a list of non-negative integers, found {shape!r}")
            if (not isinstance(offsets, list) or len(offsets) != 2 or not all(type(o) is int for o in offsets)
                    or not 0 <= offsets[0] <= offsets[1]):
                raise CheckpointError(f"{where}: data_offsets must be [begin, end] with 0 <= begin <= end, "
                                      f"found {offsets!r}")
            expected = math.prod(shape) * DTYPES[dtype].itemsize
            if offsets[1] - offsets[0] != expected:
                raise CheckpointError(f"{where}: data_offsets {offsets} span {offsets[1] - offsets[0]} bytes but "
                                      f"{dtype} {shape} needs {expected}")
        return header

    # -- reading --------------------------------------------------------------------------------
    def _read(self, name: str, rows: tuple[int, int] | None = None) -> np.ndarray:
        """One tensor (or rows of it) through the safetensors package, which re-validates what we checked.
        The file is mapped for this read only, so a long export does not keep the whole checkpoint resident."""
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(self.path), framework="numpy") as f:
                return f.get_tensor(name) if rows is None else f.get_slice(name)[rows[0]:rows[1]]
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"{self.path}: safetensors refused the file ({e})") from None

    def names(self) -> list[str]:
        return list(self.header)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._info(name)["shape"])

    def dtype(self, name: str) -> str:
        return self._info(name)["dtype"]

    def _info(self, name: str) -> dict:
        try:
            return self.header[name]
        except KeyError:
            raise CheckpointError(f"{self.path}: no tensor named '{name}'") from None

    def raw(self, name: str) -> np.ndarray:
        """The tensor in its stored dtype (BF16 as ml_dtypes.bfloat16)."""
        self._info(name)
        return self._read(name)

    def tensor(self, name: str) -> np.ndarray:
        """The tensor as float32 (BF16 and F16 widen exactly)."""
        return self.raw(name).astype(np.float32)

    def raw_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows start..stop of a tensor in its stored dtype, without reading the rest of it."""
        shape = self.shape(name)
        if not shape or not 0 <= start <= stop <= shape[0]:
            raise CheckpointError(f"{self.path}: rows {start}..{stop} are outside tensor '{name}' {list(shape)}")
        return self._read(name, (start, stop))

    def rows(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows start..stop of a tensor as float32, without reading the rest of it."""
        return self.raw_rows(name, start, stop).astype(np.float32)

    def check_shapes(self, expected: dict[str, tuple[int, ...]], source: str = PARAMS_FILE) -> None:
        """Every expected tensor is present with its expected shape, and nothing else is there."""
        problems = []
        for name, shape in expected.items():
            if name not in self.header:
                problems.append(f"missing tensor '{name}' (expected shape {list(shape)})")
            elif tuple(self.header[name]["shape"]) != tuple(shape):
                problems.append(f"tensor '{name}' has shape {self.header[name]['shape']}, {source} implies "
                                f"{list(shape)}")
        problems += [f"unexpected tensor '{name}' {self.header[name]['shape']} (not in the layout {source} "
                     f"describes)" for name in self.header if name not in expected]
        if problems:
            more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
            raise CheckpointError(f"{self.path}: " + "; ".join(problems[:5]) + more)


class SafetensorsWriter:
    """Writes a safetensors file tensor by tensor.

    The header is written first from the names, dtypes and shapes given up front; then `write` takes
    each tensor's data in header order, whole or in row chunks. The file appears under its name only
    when `close` finds every byte written.
    """

    def __init__(self, path: str | Path, specs: list[tuple[str, str, tuple[int, ...]]],
                 metadata: dict[str, str] | None = None):
        self.path = Path(path)
        self.specs = [(name, dtype, tuple(shape)) for name, dtype, shape in specs]
        header: dict = {"__metadata__": metadata} if metadata else {}
        offset = 0
        for name, dtype, shape in self.specs:
            if dtype not in DTYPES:
                raise CheckpointError(f"{self.path}: cannot write dtype {dtype!r} for '{name}'")
            size = math.prod(shape) * DTYPES[dtype].itemsize
            header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
            offset += size
        raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
        raw += b" " * (-len(raw) % 8)  # the data section starts 8-byte aligned, as safetensors writes it
        self.total_bytes = offset
        self._tmp = self.path.with_name(self.path.name + ".partial")
        self._file = open(self._tmp, "wb")
        self._file.write(struct.pack("<Q", len(raw)) + raw)
        self._next = 0  # index into specs of the tensor being written
        self._written = 0  # bytes of it written so far
        self.bytes_written = 0

    def write(self, name: str, data: np.ndarray) -> None:
        """Append the next tensor's data (or the next rows of it), converted to its stored dtype."""
        if self._next >= len(self.specs) or self.specs[self._next][0] != name:
            expected = self.specs[self._next][0] if self._next < len(self.specs) else "nothing more"
            raise CheckpointError(f"{self.path}: writing '{name}' out of order (expected {expected})")
        _, dtype, shape = self.specs[self._next]
        raw = np.ascontiguousarray(data, dtype=np.float32).astype(DTYPES[dtype]).tobytes()
        size = math.prod(shape) * DTYPES[dtype].itemsize
        if self._written + len(raw) > size:
            raise CheckpointError(f"{self.path}: '{name}' {list(shape)} got more data than its shape holds")
        self._file.write(raw)
        self._written += len(raw)
        self.bytes_written += len(raw)
        if self._written == size:
            self._next, self._written = self._next + 1, 0

    def close(self) -> None:
        self._file.close()
        if self._next != len(self.specs):
            self._tmp.unlink(missing_ok=True)
            raise CheckpointError(f"{self.path}: closed before '{self.specs[self._next][0]}' was written")
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        self._file.close()
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> "SafetensorsWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class Checkpoint:
    """A checkpoint folder in the released layout, checked against its params.json on open."""

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)
        if not self.dir.is_dir():
            raise CheckpointError(f"{self.dir}: not a directory (expected a checkpoint folder with {PARAMS_FILE}, "
                                  f"{WEIGHTS_FILE}, {TEKKEN_FILE} and {VOICE_DIR}/)")
        for name in (PARAMS_FILE, WEIGHTS_FILE, TEKKEN_FILE):
            if not (self.dir / name).is_file():
                raise CheckpointError(f"{self.dir / name}: missing (a checkpoint folder holds {PARAMS_FILE}, "
                                      f"{WEIGHTS_FILE}, {TEKKEN_FILE} and {VOICE_DIR}/)")
        self.config = ModelConfig.from_file(self.dir / PARAMS_FILE)
        self.weights = SafetensorsFile(self.dir / WEIGHTS_FILE)
        self.weights.check_shapes(self.config.tensor_shapes(), source=str(self.dir / PARAMS_FILE))
        self._tekken = None

    @property
    def tekken_path(self) -> Path:
        return self.dir / TEKKEN_FILE

    @property
    def tekken(self):
        """The tokenizer (`voxtral_edge.tekken.Tekken`), loaded on first use."""
        if self._tekken is None:
            from ..tekken import Tekken

            self._tekken = Tekken.from_file(self.tekken_path)
        return self._tekken

    def tensor(self, name: str) -> np.ndarray:
        return self.weights.tensor(name)

    def voice_names(self) -> list[str]:
        """The voices that have a file in voice_embedding/, sorted by name."""
        return sorted(p.stem for p in (self.dir / VOICE_DIR).glob("*.pt"))

    def voice(self, name: str) -> np.ndarray:
        """The voice's embedding rows [N, dim] as float32; N must equal the tokenizer's count for it."""
        from .torchfile import load_tensor

        path = self.dir / VOICE_DIR / f"{name}.pt"
        if not path.is_file():
            known = ", ".join(self.voice_names()) or "none"
            raise CheckpointError(f"{path}: no such voice file (voices here: {known})")
        expected = self.tekken.voice_num_audio_tokens.get(name)
        if expected is None:
            raise CheckpointError(f"{self.tekken_path}: voice '{name}' has a file but no count in "
                                  f"audio.voice_num_audio_tokens, so a prompt cannot be built for it")
        rows = load_tensor(path)
        dim = self.config.backbone.dim
        if rows.shape != (expected, dim):
            raise CheckpointError(f"{path}: voice tensor has shape {list(rows.shape)}, expected [{expected}, {dim}] "
                                  f"({TEKKEN_FILE} gives {expected} audio tokens for '{name}' and the backbone "
                                  f"dim is {dim})")
        return rows

