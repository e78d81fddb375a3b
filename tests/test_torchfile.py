"""voxtral_edge.export.torchfile against torch itself (the oracle) and against hostile or damaged files."""

import collections
import io
import os
import pickle
import pickletools
import struct
import subprocess
import zipfile

import numpy as np
import pytest
import torch

from voxtral_edge.export import torchfile
from voxtral_edge.errors import VoiceFileError
from voxtral_edge.export.torchfile import load_tensor, save_tensor

TORCH_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
INT_VIEW = {torch.bfloat16: torch.int16, torch.float16: torch.int16, torch.float32: torch.int32}


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(INT_VIEW[t.dtype])


def _tricky_floats(shape, seed=0) -> np.ndarray:
    """Random values plus bf16 rounding ties (both parities), subnormals, extremes and infinities."""
    rng = np.random.default_rng(seed)
    count = int(np.prod(shape))
    values = (rng.standard_normal(count) * 10.0 ** rng.integers(-6, 6, count)).astype(np.float32)
    specials = np.array(
        [0x3F808000, 0x3F818000, 0xBF808000, 0x3F807FFF, 0x3F808001, 0x00000001, 0x80008000,
         0x7F7FFFFF, 0x7F7F8000, 0x7F800000, 0xFF800000, 0x00000000, 0x80000000],
        dtype=np.uint32,
    ).view(np.float32)
    n = min(len(specials), values.size)
    values[:n] = specials[:n]
    return values.reshape(shape)


def _opcodes(pkl: bytes):
    """The pickle's opcodes and arguments, ignoring memo bookkeeping (which differs harmlessly)."""
    return [(op.name, arg) for op, arg, _ in pickletools.genops(pkl) if op.name not in ("BINPUT", "LONG_BINPUT")]


# --- 1. what we write, torch reads --------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
@pytest.mark.parametrize("shape", [(20, 3072), (3072,), (7, 13), (2, 3, 5, 4), (), (0, 3072)])
def test_torch_loads_what_we_save_bit_identically(tmp_path, dtype, shape):
    values = _tricky_floats(shape)
    path = tmp_path / "voice.pt"
    save_tensor(path, values, dtype=dtype)

    loaded = torch.load(path, weights_only=True)
    expected = torch.from_numpy(values.copy()).to(TORCH_DTYPES[dtype])  # torch's own round-to-nearest-even
    assert loaded.dtype == TORCH_DTYPES[dtype]
    assert tuple(loaded.shape) == shape and loaded.is_contiguous() and loaded.storage_offset() == 0
    assert torch.equal(_bits(loaded), _bits(expected))
    assert torch.equal(_bits(torch.load(path, weights_only=True, mmap=True)), _bits(expected))
    # and our reader returns exactly torch's widening of those values
    np.testing.assert_array_equal(load_tensor(path), expected.float().numpy())


def test_bfloat16_rounding_ties_go_to_even(tmp_path):
    # 1 + 2^-8 lies halfway between bf16 neighbours 1.0 (even) and 1 + 2^-7 (odd): even wins
    ties = np.array([1 + 2**-8, 1 + 3 * 2**-8, -(1 + 2**-8), 1 + 2**-8 + 2**-20], dtype=np.float32)
    save_tensor(tmp_path / "t.pt", ties)
    loaded = torch.load(tmp_path / "t.pt", weights_only=True).float().numpy()
    np.testing.assert_array_equal(loaded, np.array([1.0, 1 + 2 * 2**-7, -1.0, 1 + 2**-7], dtype=np.float32))


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
def test_nan_stays_nan_with_its_sign(tmp_path, dtype):
    # payloads that truncation alone would turn into +-inf in bf16
    nans = np.array([0x7FC00000, 0xFFC00000, 0x7F800001, 0xFF800001, 0x7FBFFFFF], dtype=np.uint32).view(np.float32)
    save_tensor(tmp_path / "n.pt", nans, dtype=dtype)
    loaded = torch.load(tmp_path / "n.pt", weights_only=True)
    assert torch.isnan(loaded).all()
    assert torch.signbit(loaded).tolist() == [False, True, False, True, False]
    assert np.isnan(load_tensor(tmp_path / "n.pt")).all()


def test_file_layout_matches_torch_save(tmp_path):
    values = _tricky_floats((4, 6))
    ours, theirs = tmp_path / "ours" / "voice.pt", tmp_path / "theirs" / "voice.pt"
    ours.parent.mkdir()
    theirs.parent.mkdir()
    save_tensor(ours, values)
    torch.save(torch.from_numpy(values).bfloat16(), theirs)

    with zipfile.ZipFile(ours) as a, zipfile.ZipFile(theirs) as b:
        assert a.namelist() == b.namelist()  # same entries, same order, prefix "voice"
        assert [i.compress_type for i in a.infolist()] == [zipfile.ZIP_STORED] * len(a.namelist())
        assert _opcodes(a.read("voice/data.pkl")) == _opcodes(b.read("voice/data.pkl"))
        for name in b.namelist():
            if name not in ("voice/data.pkl", "voice/.data/serialization_id"):
                assert a.read(name) == b.read(name), name
        assert len(a.read("voice/.data/serialization_id")) == 40
        infos = a.infolist()

    raw = ours.read_bytes()
    for info in infos:  # every entry's data starts on a 64-byte boundary, padded in the local header
        name_len, extra_len = struct.unpack_from("<HH", raw, info.header_offset + 26)
        start = info.header_offset + 30 + name_len + extra_len
        assert start % 64 == 0, info.filename
        assert raw[start : start + info.file_size] == zipfile.ZipFile(ours).read(info.filename)


def test_save_is_deterministic(tmp_path):
    values = _tricky_floats((5, 3072))
    (tmp_path / "a").mkdir()
    save_tensor(tmp_path / "a" / "v.pt", values)
    save_tensor(tmp_path / "v.pt", values)
    assert (tmp_path / "a" / "v.pt").read_bytes() == (tmp_path / "v.pt").read_bytes()
    save_tensor(tmp_path / "w.pt", values + 1)  # and the id still tells different contents apart
    ids = [zipfile.ZipFile(tmp_path / f"{n}.pt").read(f"{n}/.data/serialization_id") for n in "vw"]
    assert ids[0] != ids[1] and all(i.isdigit() and len(i) == 40 for i in ids)


def test_save_replaces_existing_file_and_leaves_nothing_else(tmp_path):
    path = tmp_path / "v.pt"
    save_tensor(path, np.zeros((2, 3), np.float32))
    save_tensor(path, np.ones((4,), np.float64), dtype="float32")
    assert torch.equal(torch.load(path, weights_only=True), torch.ones(4))
    assert sorted(os.listdir(tmp_path)) == ["v.pt"]


# --- 2. what torch writes, we read ---------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_we_read_what_torch_saves(tmp_path, dtype):
    generator = torch.Generator().manual_seed(1)
    for shape in [(16, 3072), (3072,), (7, 13), ()]:
        tensor = (torch.randn(shape, generator=generator) * 100).to(dtype)
        path = tmp_path / f"{len(shape)}.pt"
        torch.save(tensor, path)
        result = load_tensor(path)
        assert result.dtype == np.float32 and result.flags.c_contiguous and result.shape == shape
        np.testing.assert_array_equal(result, tensor.float().numpy())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_we_read_torch_views_with_offset_and_stride(tmp_path, dtype):
    big = torch.randn(10, 3072, generator=torch.Generator().manual_seed(2)).to(dtype)
    views = {
        "rows": big[2:5],  # storage offset 2*3072, storage bigger than the tensor
        "transpose": big[:, :6].t(),  # non-contiguous strides (1, 3072)
        "columns": big[3:, 5:9],  # offset and stride together
        "every_other": big[1::3, ::2],
    }
    for name, view in views.items():
        path = tmp_path / f"{name}.pt"
        torch.save(view, path)
        with zipfile.ZipFile(path) as archive:  # torch really stored the whole storage
            assert archive.getinfo(f"{name}/data/0").file_size == big.numel() * big.element_size()
        assert view.storage_offset() != 0 or not view.is_contiguous()
        np.testing.assert_array_equal(load_tensor(path), view.float().numpy(), err_msg=name)


# --- helpers for hand-built files ----------------------------------------------------------------


def _pack(path, pkl, prefix="v", storage=b"\0" * 24, byteorder=b"little", compress=zipfile.ZIP_STORED,
          extra=()):
    """An otherwise valid torch zip around an arbitrary data.pkl."""
    entries = [("data.pkl", pkl), (".format_version", b"1"), (".storage_alignment", b"64")]
    if byteorder is not None:
        entries.append(("byteorder", byteorder))
    if storage is not None:
        entries.append(("data/0", storage))
    entries += [("version", b"3\n"), (".data/serialization_id", b"0" * 40)]
    with zipfile.ZipFile(path, "w", compress) as archive:
        for name, payload in entries:
            archive.writestr(f"{prefix}/{name}", payload)
        for name, payload in extra:  # full names, outside the prefix if wanted
            archive.writestr(name, payload)
    return path


class _Placeholder:
    pass


def _tensor_pickle(numel=12, offset=0, size=(3, 4), stride=(4, 1), key="0", requires_grad=False, hooks=None,
                   more=()):
    """A bf16 tensor pickle built by the standard pickler from torch's real globals (as torch.save does)."""
    storage, storage_type = _Placeholder(), torch.BFloat16Storage
    hooks = collections.OrderedDict() if hooks is None else hooks

    class Tensor:
        def __reduce__(self):
            return (torch._utils._rebuild_tensor_v2, (storage, offset, size, stride, requires_grad, hooks, *more))

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            return ("storage", storage_type, key, "cpu", numel) if obj is storage else None

    buffer = io.BytesIO()
    Pickler(buffer, protocol=2).dump(Tensor())
    return buffer.getvalue()


def _refused(path) -> str:
    with pytest.raises(VoiceFileError) as info:
        load_tensor(path)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    return message


def test_hand_built_tensor_pickle_is_read(tmp_path):
    # guards the helpers below: without hostility, _pack + _tensor_pickle is a valid file
    bits = (np.arange(12, dtype=np.float32).view(np.uint32) >> 16).astype("<u2")  # 0..11 are exact in bf16
    path = _pack(tmp_path / "v.pt", _tensor_pickle(), storage=bits.tobytes())
    np.testing.assert_array_equal(load_tensor(path), np.arange(12, dtype=np.float32).reshape(3, 4))
    np.testing.assert_array_equal(torch.load(path, weights_only=True).float().numpy(), load_tensor(path))


# --- 3. hostile files are refused without running anything ---------------------------------------


def _hostile_pickles(marker):
    command = f"touch {marker}"

    class Reduces:
        def __reduce__(self):
            return (os.system, (command,))

    class Popens:
        def __reduce__(self):
            return (subprocess.Popen, (["touch", str(marker)],))

    def text(s):
        return s.encode()

    return {
        "os.system": b"\x80\x02cos\nsystem\n(X" + struct.pack("<I", len(command)) + text(command) + b"tR.",
        "posix.system": pickle.dumps(Reduces(), protocol=2),
        "builtins.eval": b"cbuiltins\neval\n(V__import__('os').system('" + text(command) + b"')\ntR.",
        "builtins.exec": b"\x80\x02cbuiltins\nexec\n(Vopen('" + text(str(marker)) + b"', 'w')\ntR.",
        "subprocess.Popen": pickle.dumps(Popens(), protocol=2, fix_imports=False),
        "commands.Popen": pickle.dumps(Popens(), protocol=2),  # pickle's py2 spelling of subprocess
        "torch.load": b"\x80\x02ctorch\nload\n(V" + text(str(marker)) + b"\ntR.",
        "torch.serialization.load": b"\x80\x02ctorch.serialization\nload\n(V" + text(str(marker)) + b"\ntR.",
        "torch._utils._rebuild_tensor": b"\x80\x02ctorch._utils\n_rebuild_tensor\n(tR.",
        # the hostile call hidden inside an otherwise genuine tensor: as the backward_hooks argument
        "nt.system": _tensor_pickle().replace(b"ccollections\nOrderedDict\n", b"cnt\nsystem\n"),
        # protocol 4 STACK_GLOBAL goes through the same gate
        "builtins.getattr": pickle.dumps(getattr, protocol=4),
    }


@pytest.mark.parametrize("refused", list(_hostile_pickles("m")))
def test_hostile_global_is_refused_and_never_runs(tmp_path, refused):
    marker = tmp_path / "pwned"
    pkl = _hostile_pickles(marker)[refused]
    path = _pack(tmp_path / "evil.pt", pkl, prefix="evil")
    message = _refused(path)
    assert f"refused pickle global '{refused}'" in message
    assert not marker.exists()
    # sanity: the same payload really is hostile when unpickled without our gate (skip the ones
    # that need a foreign OS or torch's loader)
    if refused in ("os.system", "posix.system", "subprocess.Popen", "builtins.exec", "builtins.eval"):
        proc = pickle.loads(pkl)
        if isinstance(proc, subprocess.Popen):
            proc.wait()
        assert marker.exists()


@pytest.mark.parametrize(
    "opcode, pkl",
    [
        ("INST", b"(V" + b"touch MARKER" + b"\nios\nsystem\n."),
        ("OBJ", b"\x80\x02(cos\nsystem\nV" + b"touch MARKER" + b"\no."),
        ("BUILD", b"\x80\x02ccollections\nOrderedDict\n)R}V__class__\nNsb."),
        ("NEWOBJ", b"\x80\x02ccollections\nOrderedDict\n)\x81."),
        ("EXT1", b"\x80\x02\x82\x01."),
        ("PERSID", b"P0\n."),
    ],
)
def test_object_building_opcodes_are_refused(tmp_path, opcode, pkl):
    marker = tmp_path / "pwned"
    pkl = pkl.replace(b"MARKER", str(marker).encode())
    message = _refused(_pack(tmp_path / "evil.pt", pkl))
    assert f"refused pickle opcode {opcode}" in message
    assert not marker.exists()


# --- 4. damaged files ----------------------------------------------------------------------------


def _torch_file(path, tensor=None):
    torch.save(torch.arange(12.0).reshape(3, 4).bfloat16() if tensor is None else tensor, path)
    return path


def test_not_a_zip(tmp_path):
    path = tmp_path / "v.pt"
    path.write_bytes(b"this is not a zip archive at all" * 10)
    assert "not a valid zip" in _refused(path)


def test_missing_file(tmp_path):
    assert "cannot read" in _refused(tmp_path / "absent.pt")


@pytest.mark.parametrize("keep", [0.2, 0.5, 0.9, 0.99])
def test_truncated_zip(tmp_path, keep):
    data = _torch_file(tmp_path / "full.pt").read_bytes()
    path = tmp_path / "v.pt"
    path.write_bytes(data[: int(len(data) * keep)])
    _refused(path)


def test_corrupted_storage_bytes_fail_crc(tmp_path):
    data = bytearray(_torch_file(tmp_path / "v.pt").read_bytes())
    info = zipfile.ZipFile(tmp_path / "v.pt").getinfo("v/data/0")
    name_len, extra_len = struct.unpack_from("<HH", data, info.header_offset + 26)
    data[info.header_offset + 30 + name_len + extra_len] ^= 0xFF
    (tmp_path / "v.pt").write_bytes(bytes(data))
    assert "cannot read record 'v/data/0' (BadZipFile: Bad CRC-32" in _refused(tmp_path / "v.pt")


def test_missing_storage_record(tmp_path):
    path = _pack(tmp_path / "v.pt", _tensor_pickle(), storage=None)
    assert "missing storage record 'v/data/0'" in _refused(path)


def test_storage_key_not_in_archive(tmp_path):
    assert "missing storage record 'v/data/../data.pkl'" in _refused(
        _pack(tmp_path / "v.pt", _tensor_pickle(key="../data.pkl"))
    )


@pytest.mark.parametrize("nbytes", [0, 22, 26])
def test_storage_size_not_numel(tmp_path, nbytes):
    message = _refused(_pack(tmp_path / "v.pt", _tensor_pickle(numel=12), storage=b"\0" * nbytes))
    assert f"holds {nbytes} bytes, expected 12 x 2 = 24" in message


@pytest.mark.parametrize(
    "offset, size, stride",
    [
        (1, (3, 4), (4, 1)),  # shifted by one
        (0, (3, 5), (4, 1)),  # one column too many
        (0, (3, 4), (1, 4)),  # transposed strides on the wrong shape
        (12, (1,), (1,)),  # just past the end
        (0, (2,), (12,)),  # a stride that jumps out
        (11, (3, 2), (0, 1)),  # a broadcast row that runs off the end
    ],
)
def test_view_outside_storage(tmp_path, offset, size, stride):
    path = _pack(tmp_path / "v.pt", _tensor_pickle(offset=offset, size=size, stride=stride))
    assert "reaches outside its storage of 12 elements" in _refused(path)
    with pytest.raises(RuntimeError):  # torch agrees: these are out of bounds
        torch.load(path, weights_only=True)


def test_empty_view_and_zero_stride_like_torch(tmp_path):
    bits = (np.arange(12, dtype=np.float32).view(np.uint32) >> 16).astype("<u2").tobytes()
    for offset, size, stride in [(13, (0,), (1,)), (12, (0, 5), (5, 1)), (3, (4, 2), (0, 1)), (0, (3, 4), (1, 3))]:
        path = _pack(tmp_path / "v.pt", _tensor_pickle(offset=offset, size=size, stride=stride), storage=bits)
        np.testing.assert_array_equal(load_tensor(path), torch.load(path, weights_only=True).float().numpy())
        assert load_tensor(path).shape == size


@pytest.mark.parametrize("size, stride", [((3, -4), (1, 1)), ((3, 4), (4, -1))])
def test_negative_size_or_stride(tmp_path, size, stride):
    assert "invalid tensor view" in _refused(_pack(tmp_path / "v.pt", _tensor_pickle(size=size, stride=stride)))


@pytest.mark.parametrize("kind", ["dict", "list", "tuple"])
def test_result_must_be_one_tensor(tmp_path, kind):
    tensor = torch.zeros(2, 3, dtype=torch.bfloat16)
    contents = {"dict": {"embedding": tensor}, "list": [tensor], "tuple": (tensor, tensor)}[kind]
    path = _torch_file(tmp_path / "v.pt", contents)
    assert f"holds a {kind}, expected exactly one tensor" in _refused(path)


def test_two_tensors_refused_at_the_second(tmp_path):
    tensors = [torch.zeros(2, dtype=torch.bfloat16), torch.ones(3, dtype=torch.bfloat16)]
    path = _torch_file(tmp_path / "v.pt", tensors)
    assert "holds more than one tensor" in _refused(path)


@pytest.mark.parametrize(
    "tensor, refused",
    [
        (torch.arange(3), "torch.LongStorage"),
        (torch.zeros(3, dtype=torch.float64), "torch.DoubleStorage"),
        (torch.zeros(3, dtype=torch.bool), "torch.BoolStorage"),
        (torch.zeros(3, dtype=torch.uint16), "torch._utils._rebuild_tensor_v3"),  # the UntypedStorage form
    ],
)
def test_unsupported_storage_type(tmp_path, tensor, refused):
    assert f"refused pickle global '{refused}'" in _refused(_torch_file(tmp_path / "v.pt", tensor))


def test_hooks_or_metadata_refused(tmp_path):
    hooks = collections.OrderedDict()
    hooks[1] = 2
    assert "carries metadata or hooks" in _refused(_pack(tmp_path / "a.pt", _tensor_pickle(hooks=hooks)))
    assert "carries metadata or hooks" in _refused(_pack(tmp_path / "b.pt", _tensor_pickle(more=({"x": 1},))))
    assert "requires_grad" in _refused(_pack(tmp_path / "c.pt", _tensor_pickle(requires_grad=1)))


def test_requires_grad_tensor_is_read(tmp_path):
    tensor = torch.randn(3, 5, requires_grad=True)
    torch.save(tensor, tmp_path / "v.pt")
    np.testing.assert_array_equal(load_tensor(tmp_path / "v.pt"), tensor.detach().numpy())


@pytest.mark.parametrize(
    "pkl, why",
    [
        (b"garbage that is not a pickle", "no newline found"),
        (b"", "pickle exhausted before seeing STOP"),
        (b"\x80\x02K\x01K\x02", "pickle exhausted before seeing STOP"),
        (b"\x80\x02t.", "could not find MARK"),
        (b"\x80\x02)R.", "stack underflow"),
        (b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n(K\x01tR.", "TypeError"),  # wrong arguments
    ],
)
def test_garbage_pickle(tmp_path, pkl, why):
    message = _refused(_pack(tmp_path / "v.pt", pkl))
    assert "invalid pickle in data.pkl" in message and why in message


def test_pickle_of_a_plain_value_is_not_a_tensor(tmp_path):
    assert "holds a int, expected exactly one tensor" in _refused(_pack(tmp_path / "v.pt", b"\x80\x02K\x07."))


def test_compressed_entry_refused(tmp_path):
    path = _pack(tmp_path / "v.pt", _tensor_pickle(), compress=zipfile.ZIP_DEFLATED)
    assert "is compressed" in _refused(path)


def test_absurd_entry_size_refused(tmp_path, monkeypatch):
    path = _pack(tmp_path / "v.pt", _tensor_pickle(numel=200, size=(200,), stride=(1,)), storage=b"\0" * 400)
    assert load_tensor(path).shape == (200,)
    monkeypatch.setattr(torchfile, "MAX_ENTRY_BYTES", 300)  # the 400-byte storage now counts as absurd
    assert "entry 'v/data/0' claims 400 bytes" in _refused(path)


def test_big_endian_refused(tmp_path):
    path = _pack(tmp_path / "v.pt", _tensor_pickle(), byteorder=b"big")
    assert "unsupported byteorder b'big'" in _refused(path)


def test_missing_byteorder_means_little(tmp_path):
    bits = np.array([0x3F80] * 12, dtype="<u2")  # bf16 1.0
    path = _pack(tmp_path / "v.pt", _tensor_pickle(), storage=bits.tobytes(), byteorder=None)
    np.testing.assert_array_equal(load_tensor(path), np.ones((3, 4), np.float32))


def test_no_data_pkl_or_two_folders(tmp_path):
    with zipfile.ZipFile(tmp_path / "a.pt", "w") as archive:
        archive.writestr("v/data/0", b"\0" * 24)
        archive.writestr("v/version", b"3\n")
    assert "no 'v/data.pkl' record" in _refused(tmp_path / "a.pt")
    path = _pack(tmp_path / "b.pt", _tensor_pickle(), extra=[("other/data.pkl", b".")])
    assert "one top-level folder" in _refused(path)


# --- 5. save_tensor is atomic ---------------------------------------------------------------------


def test_bad_arguments_leave_no_file(tmp_path):
    with pytest.raises(ValueError, match="dtype must be one of"):
        save_tensor(tmp_path / "v.pt", np.zeros(3, np.float32), dtype="int8")
    with pytest.raises(ValueError, match="expected a float array"):
        save_tensor(tmp_path / "v.pt", np.zeros(3, np.int64))
    assert os.listdir(tmp_path) == []


def test_failure_mid_write_keeps_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "v.pt"
    save_tensor(path, np.ones((2, 3), np.float32))
    before = path.read_bytes()
    real_writestr = zipfile.ZipFile.writestr
    written = []

    def failing_writestr(self, info, data, *args, **kwargs):
        if info.filename.endswith("data/0"):
            raise OSError("disk full")
        written.append(info.filename)
        return real_writestr(self, info, data, *args, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "writestr", failing_writestr)
    with pytest.raises(OSError, match="disk full"):
        save_tensor(path, np.zeros((5, 7), np.float32))
    assert written  # the failure really happened part-way through writing the temp file
    assert os.listdir(tmp_path) == ["v.pt"]
    assert path.read_bytes() == before
    with pytest.raises(OSError, match="disk full"):  # and with no earlier file, nothing at all remains
        save_tensor(tmp_path / "new.pt", np.zeros(3, np.float32))
    assert os.listdir(tmp_path) == ["v.pt"]
