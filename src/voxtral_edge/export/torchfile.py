"""Read and write single-tensor ``.pt`` files (the voice_embedding/*.pt presets) without torch.

Format (torch.save, torch 2.x): a zip archive with one top-level folder ``<prefix>/`` holding
``data.pkl`` (a protocol-2 pickle that calls ``torch._utils._rebuild_tensor_v2`` on a persistent
storage id), ``data/<key>`` (raw little-endian storage bytes, STORED, 64-byte aligned), ``version``,
``byteorder``, ``.format_version``, ``.storage_alignment`` and ``.data/serialization_id``.

Safety rule: nothing in the file is ever executed. The pickle is first checked opcode by opcode
against a list of plain-data opcodes, and the unpickler resolves only the four globals a tensor
needs, each mapped to our own numpy code; anything else is a VoiceFileError naming the file.
"""

from __future__ import annotations

import collections
import hashlib
import io
import os
import pickle
import pickletools
import secrets
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import VoiceFileError

__all__ = ["load_tensor", "save_tensor"]

MAX_PICKLE_BYTES = 1 << 20  # a one-tensor pickle is ~160 bytes
MAX_ENTRY_BYTES = 1 << 28  # bounds any entry and the decoded tensor (a voice is ~12 KiB a frame)
ALIGNMENT = 64  # torch aligns every entry's data to 64 bytes (.storage_alignment)


@dataclass(frozen=True)
class _StorageType:
    name: str
    dtype: np.dtype  # little-endian element type as stored


_STORAGE_TYPES = {
    "BFloat16Storage": _StorageType("BFloat16Storage", np.dtype("<u2")),
    "HalfStorage": _StorageType("HalfStorage", np.dtype("<f2")),
    "FloatStorage": _StorageType("FloatStorage", np.dtype("<f4")),
}
_SAVE_DTYPES = {"bfloat16": "BFloat16Storage", "float16": "HalfStorage", "float32": "FloatStorage"}

# Opcodes that only build data (plus GLOBAL/REDUCE/BINPERSID, which go through find_class and
# persistent_load). BUILD, INST, OBJ, NEWOBJ, EXT*, PERSID and the like are refused outright.
_ALLOWED_OPCODES = frozenset(
    "PROTO FRAME STOP MARK POP POP_MARK DUP MEMOIZE PUT BINPUT LONG_BINPUT GET BINGET LONG_BINGET "
    "NONE NEWTRUE NEWFALSE INT BININT BININT1 BININT2 LONG LONG1 FLOAT BINFLOAT "
    "STRING BINSTRING SHORT_BINSTRING UNICODE BINUNICODE SHORT_BINUNICODE BINUNICODE8 "
    "BINBYTES SHORT_BINBYTES BINBYTES8 EMPTY_TUPLE TUPLE TUPLE1 TUPLE2 TUPLE3 "
    "EMPTY_LIST LIST APPEND APPENDS EMPTY_DICT DICT SETITEM SETITEMS "
    "GLOBAL STACK_GLOBAL REDUCE BINPERSID".split()
)


class _Storage:
    """One storage record, read from the zip when the pickle refers to it."""

    def __init__(self, storage_type: _StorageType, numel: int, data: bytes):
        self.storage_type = storage_type
        self.numel = numel
        self.array = np.frombuffer(data, dtype=storage_type.dtype)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _empty_ordered_dict(*args):
    # torch pickles backward_hooks as OrderedDict(); anything with content is not a tensor file
    if len(args) > 1 or (args and (not isinstance(args[0], (tuple, list, dict)) or args[0])):
        raise pickle.UnpicklingError("OrderedDict may only be called empty")
    return collections.OrderedDict()


class _TensorUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, path: str, archive: zipfile.ZipFile, prefix: str):
        super().__init__(io.BytesIO(data))
        self.path, self.archive, self.prefix = path, archive, prefix
        self.names = set(archive.namelist())
        self.storages: dict[str, _Storage] = {}  # read each record once, however often it is named
        self.tensors = 0

    def _fail(self, message: str) -> VoiceFileError:
        return VoiceFileError(f"{self.path}: {message}")

    def find_class(self, module, name):
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return self._rebuild_tensor
        if module == "torch" and name in _STORAGE_TYPES:
            return _STORAGE_TYPES[name]
        if (module, name) == ("collections", "OrderedDict"):
            return _empty_ordered_dict
        raise self._fail(
            f"refused pickle global '{module}.{name}' (a voice file may only rebuild one tensor)"
        )

    def persistent_load(self, pid):
        if not (
            isinstance(pid, tuple)
            and len(pid) == 5
            and pid[0] == "storage"
            and isinstance(pid[1], _StorageType)
            and isinstance(pid[2], str)
            and isinstance(pid[3], str)
            and _is_int(pid[4])
        ):
            raise self._fail(f"unsupported persistent id {pid!r:.200} (expected a torch storage)")
        storage_type, key, numel = pid[1], pid[2], pid[4]
        name = f"{self.prefix}/data/{key}"
        if name not in self.names:
            raise self._fail(f"missing storage record '{name}'")
        expected = numel * storage_type.dtype.itemsize
        actual = self.archive.getinfo(name).file_size
        if actual != expected:
            raise self._fail(
                f"storage '{name}' holds {actual} bytes, expected {numel} x "
                f"{storage_type.dtype.itemsize} = {expected} ({storage_type.name})"
            )
        if name not in self.storages:
            self.storages[name] = _Storage(storage_type, numel, _read(self.path, self.archive, name))
        storage = self.storages[name]
        if storage.storage_type != storage_type:
            raise self._fail(f"storage '{name}' is named with two element types")
        return storage

    def _rebuild_tensor(self, storage, offset, size, stride, requires_grad, hooks, *metadata):
        self.tensors += 1
        if self.tensors > 1:  # refuse early, before a file full of tensors fills memory
            raise self._fail("holds more than one tensor, expected exactly one")
        if not isinstance(storage, _Storage):
            raise self._fail("tensor is not backed by a storage record")
        if not isinstance(requires_grad, bool):
            raise self._fail(f"invalid requires_grad {requires_grad!r:.40}")
        if metadata or not isinstance(hooks, collections.OrderedDict) or hooks:
            raise self._fail("tensor carries metadata or hooks; expected a plain tensor")
        if not (
            _is_int(offset)
            and isinstance(size, tuple)
            and isinstance(stride, tuple)
            and len(size) == len(stride)
            and all(_is_int(v) and v >= 0 for v in (offset, *size, *stride))
        ):
            raise self._fail(
                f"invalid tensor view offset={offset!r:.80} size={size!r:.80} stride={stride!r:.80}"
            )
        numel = 1
        for n in size:
            numel *= n
        if numel * 4 > MAX_ENTRY_BYTES:
            raise self._fail(f"tensor of size {size} is too large ({numel} elements)")
        # every index the view can touch must lie inside the storage before as_strided sees it
        # (an empty view touches nothing, so like torch accept any offset for it)
        last = offset + sum((n - 1) * s for n, s in zip(size, stride))
        if numel and last >= storage.numel:
            raise self._fail(
                f"tensor view offset={offset} size={size} stride={stride} reaches outside "
                f"its storage of {storage.numel} elements"
            )
        base = storage.array[offset:]
        itemsize = base.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            base, shape=size, strides=tuple(s * itemsize for s in stride), writeable=False
        )
        return _to_float32(np.array(view, order="C"), storage.storage_type)


def _to_float32(values: np.ndarray, storage_type: _StorageType) -> np.ndarray:
    if storage_type.name == "BFloat16Storage":
        # bf16 is the high half of a float32, so widening is exact
        widened = values.astype(np.uint32)
        widened <<= 16  # in place: a 0-d result stays an array
        return widened.view(np.float32)
    return values.astype(np.float32)


def _check_opcodes(path: str, data: bytes) -> None:
    try:
        for opcode, arg, _pos in pickletools.genops(data):
            if opcode.name not in _ALLOWED_OPCODES:
                detail = f" {arg!r:.80}" if isinstance(arg, str) else ""
                raise VoiceFileError(
                    f"{path}: refused pickle opcode {opcode.name}{detail} "
                    "(a voice file may only rebuild one tensor)"
                )
    except VoiceFileError:
        raise
    except Exception as exc:
        raise VoiceFileError(f"{path}: invalid pickle in data.pkl ({exc})") from exc


def _open_archive(path: str) -> tuple[zipfile.ZipFile, str]:
    try:
        archive = zipfile.ZipFile(path)
        infos = archive.infolist()
    except OSError as exc:
        raise VoiceFileError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    except Exception as exc:
        raise VoiceFileError(f"{path}: not a torch .pt file (not a valid zip archive: {exc})") from exc
    try:
        names = [info.filename for info in infos]
        prefixes = {name.split("/", 1)[0] for name in names}
        if len(prefixes) != 1 or len(set(names)) != len(names):
            raise VoiceFileError(
                f"{path}: expected one top-level folder of unique entries, found {sorted(prefixes)[:5]}"
            )
        prefix = prefixes.pop()
        if f"{prefix}/data.pkl" not in names:
            raise VoiceFileError(f"{path}: no '{prefix}/data.pkl' record (not a torch .pt file)")
        for info in infos:
            if info.compress_type != zipfile.ZIP_STORED:
                raise VoiceFileError(f"{path}: entry '{info.filename}' is compressed (torch stores entries)")
            if info.file_size > MAX_ENTRY_BYTES:
                raise VoiceFileError(f"{path}: entry '{info.filename}' claims {info.file_size} bytes, too large")
        return archive, prefix
    except BaseException:
        archive.close()
        raise


def _read(path: str, archive: zipfile.ZipFile, name: str) -> bytes:
    try:
        return archive.read(name)
    except Exception as exc:  # bad CRC, truncated data, damaged local header
        raise VoiceFileError(f"{path}: cannot read record '{name}' ({type(exc).__name__}: {exc})") from exc


def load_tensor(path) -> np.ndarray:
    """The one tensor stored in a torch .pt file, as a C-contiguous float32 array."""
    path = os.fspath(path)
    archive, prefix = _open_archive(path)
    with archive:
        if archive.getinfo(f"{prefix}/data.pkl").file_size > MAX_PICKLE_BYTES:
            raise VoiceFileError(f"{path}: data.pkl is too large for a one-tensor file")
        data = _read(path, archive, f"{prefix}/data.pkl")
        if f"{prefix}/byteorder" in archive.namelist():
            byteorder = _read(path, archive, f"{prefix}/byteorder")
            if byteorder != b"little":
                raise VoiceFileError(f"{path}: unsupported byteorder {byteorder[:16]!r} (only 'little')")
        _check_opcodes(path, data)
        try:
            result = _TensorUnpickler(data, path, archive, prefix).load()
        except VoiceFileError:
            raise
        except Exception as exc:  # stack underflow, bad arguments to our rebuild, numpy refusing a view
            raise VoiceFileError(f"{path}: invalid pickle in data.pkl ({type(exc).__name__}: {exc})") from exc
    if not isinstance(result, np.ndarray):
        raise VoiceFileError(f"{path}: holds a {type(result).__name__}, expected exactly one tensor")
    return result


def _bfloat16_bits(values: np.ndarray) -> np.ndarray:
    bits = values.view(np.uint32)
    # round to nearest even on the 16 dropped bits (wraps only for NaNs, which are replaced)
    rounded = ((bits + np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1))) >> 16).astype(np.uint16)
    # truncating a NaN can clear its mantissa (turning it into inf), so keep sign and set the quiet bit
    quiet_nan = ((bits >> 16) | np.uint32(0x0040)).astype(np.uint16)
    return np.where(np.isnan(values), quiet_nan, rounded)


def _tensor_pickle(storage_name: str, shape: tuple[int, ...], numel: int) -> bytes:
    # written opcode by opcode: pickle.Pickler would import torch to resolve these globals
    def integer(value: int) -> bytes:
        if value < 256:
            return b"K" + struct.pack("<B", value)
        if value < 65536:
            return b"M" + struct.pack("<H", value)
        if value < 2**31:
            return b"J" + struct.pack("<i", value)
        raw = value.to_bytes((value.bit_length() + 8) // 8, "little")
        return b"\x8a" + struct.pack("<B", len(raw)) + raw

    def text(value: str) -> bytes:
        raw = value.encode()
        return b"X" + struct.pack("<I", len(raw)) + raw

    def tuple_of(values) -> bytes:
        items = b"".join(integer(v) for v in values)
        if len(values) <= 3:  # EMPTY_TUPLE, TUPLE1..3, as pickle itself writes short tuples
            return items + b")\x85\x86\x87"[len(values) : len(values) + 1]
        return b"(" + items + b"t"

    strides, step = [], 1
    for n in reversed(shape):
        strides.insert(0, step)
        step *= n
    return b"".join([
        b"\x80\x02",  # PROTO 2
        b"ctorch._utils\n_rebuild_tensor_v2\n",
        b"((", text("storage"), f"ctorch\n{storage_name}\n".encode(), text("0"), text("cpu"),
        integer(numel), b"tQ",  # TUPLE, BINPERSID
        integer(0), tuple_of(shape), tuple_of(strides),
        b"\x89",  # NEWFALSE: requires_grad
        b"ccollections\nOrderedDict\n)R",  # backward_hooks = OrderedDict()
        b"tR.",  # TUPLE, REDUCE, STOP
    ])


def save_tensor(path, array, dtype: str = "bfloat16") -> None:
    """Write a float array as a .pt file that torch.load(path, weights_only=True) reads."""
    if dtype not in _SAVE_DTYPES:
        raise ValueError(f"save_tensor: dtype must be one of {sorted(_SAVE_DTYPES)}, got {dtype!r}")
    values = np.asarray(array)
    if values.dtype.kind != "f":
        raise ValueError(f"save_tensor: expected a float array, got {values.dtype}")
    with np.errstate(over="ignore"):  # overflow to +-inf is the IEEE result torch gives too
        values = np.array(values, dtype=np.float32, order="C")  # (ascontiguousarray makes 0-d 1-d)
        if dtype == "bfloat16":
            storage = _bfloat16_bits(values).astype("<u2").tobytes()
        else:
            storage = values.astype("<f2" if dtype == "float16" else "<f4").tobytes()

    path = Path(path)
    prefix = path.stem or "archive"
    pkl = _tensor_pickle(_SAVE_DTYPES[dtype], values.shape, values.size)
    # 40 digits like torch's, but derived from the content so the same tensor gives the same file
    digest = int.from_bytes(hashlib.sha256(pkl + storage).digest(), "big")
    serialization_id = f"{digest % 10**40:040d}"
    entries = [
        ("data.pkl", pkl),
        (".format_version", b"1"),
        (".storage_alignment", str(ALIGNMENT).encode()),
        ("byteorder", b"little"),
        ("data/0", storage),
        ("version", b"3\n"),
        (".data/serialization_id", serialization_id.encode()),
    ]
    temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(temp, "xb") as handle:
            with zipfile.ZipFile(handle, "w", zipfile.ZIP_STORED) as archive:
                for name, payload in entries:
                    info = zipfile.ZipInfo(f"{prefix}/{name}", date_time=(1980, 1, 1, 0, 0, 0))
                    # pad the local header's extra field ("FB" block, like torch) so data starts aligned
                    header_end = handle.tell() + 30 + len(info.filename.encode())
                    padding = -(header_end + 4) % ALIGNMENT
                    info.extra = b"FB" + struct.pack("<H", padding) + b"Z" * padding
                    archive.writestr(info, payload)
                    info.extra = b""  # the local header is written; keep the central directory plain
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
