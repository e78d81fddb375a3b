"""consolidated.safetensors: our streaming writer and validating reader, against the safetensors package."""

from __future__ import annotations

import json
import struct

import ml_dtypes
import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file

from voxtral_edge.errors import CheckpointError
from voxtral_edge.export.checkpoint import Checkpoint, SafetensorsFile, SafetensorsWriter


def _arrays(seed=0):
    rng = np.random.default_rng(seed)
    return {"a.weight": rng.standard_normal((5, 7)).astype(np.float32),
            "b.norm": rng.standard_normal(11).astype(np.float32),
            "c.table": rng.standard_normal((13, 3)).astype(np.float32)}


@pytest.mark.parametrize("dtype, np_dtype", [("F32", np.float32), ("F16", np.float16), ("BF16", ml_dtypes.bfloat16)])
def test_writer_output_reads_back_through_safetensors(tmp_path, dtype, np_dtype):
    arrays = _arrays()
    path = tmp_path / "w.safetensors"
    with SafetensorsWriter(path, [(n, dtype, a.shape) for n, a in arrays.items()], {"k": "v"}) as w:
        for name, a in arrays.items():
            for start in range(0, len(a), 4):  # in row chunks, as the generator writes big tensors
                w.write(name, a[start:start + 4])
    with safe_open(str(path), framework="numpy") as f:
        assert f.metadata() == {"k": "v"}
        for name, a in arrays.items():
            got = f.get_tensor(name)
            assert got.dtype == np.dtype(np_dtype)
            np.testing.assert_array_equal(got, a.astype(np_dtype))  # round-to-nearest-even, as ml_dtypes does


def test_reader_reads_what_safetensors_writes(tmp_path):
    arrays = _arrays(1)
    stored = {"x.bf16": arrays["a.weight"].astype(ml_dtypes.bfloat16), "y.f16": arrays["b.norm"].astype(np.float16),
              "z.f32": arrays["c.table"]}
    path = tmp_path / "ref.safetensors"
    save_file(stored, str(path))
    f = SafetensorsFile(path)
    assert sorted(f.names()) == sorted(stored)
    for name, a in stored.items():
        got = f.tensor(name)
        assert got.dtype == np.float32 and f.shape(name) == a.shape
        np.testing.assert_array_equal(got, a.astype(np.float32))  # widening is exact
    np.testing.assert_array_equal(f.rows("z.f32", 3, 9), stored["z.f32"][3:9])
    with pytest.raises(CheckpointError, match="rows 5..20 are outside tensor 'z.f32'"):
        f.rows("z.f32", 5, 20)
    with pytest.raises(CheckpointError, match="no tensor named 'nope'"):
        f.tensor("nope")


def test_interrupted_writer_leaves_nothing(tmp_path):
    path = tmp_path / "w.safetensors"
    with pytest.raises(RuntimeError):
        with SafetensorsWriter(path, [("a", "F32", (2, 2))]) as w:
            w.write("a", np.zeros((1, 2)))
            raise RuntimeError("disk full")
    assert list(tmp_path.iterdir()) == []
    w = SafetensorsWriter(path, [("a", "F32", (2,)), ("b", "F32", (2,))])
    with pytest.raises(CheckpointError, match="writing 'b' out of order .expected a."):
        w.write("b", np.zeros(2))
    w.write("a", np.zeros(2))
    with pytest.raises(CheckpointError, match="closed before 'b' was written"):
        w.close()
    assert list(tmp_path.iterdir()) == []


def _write_raw(path, header: dict, data: bytes, header_len: int | None = None):
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw) if header_len is None else header_len) + raw + data)
    return path


GOOD = {"t": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}


@pytest.mark.parametrize("header, data, header_len, message", [
    (GOOD, bytes(8), None, r"truncated: tensor 't' ends at byte 16 of the data section but the file holds only 8"),
    (GOOD, bytes(16), 1 << 40, r"header length 1099511627776 bytes is over"),
    (GOOD, bytes(16), 5000, r"header length 5000 does not fit in the file"),
    ({"t": {"dtype": "Q7", "shape": [4], "data_offsets": [0, 16]}}, bytes(16), None, r"tensor 't': unknown dtype 'Q7'"),
    ({"t": {"dtype": "I64", "shape": [2], "data_offsets": [0, 16]}}, bytes(16), None,
     r"tensor 't': unsupported dtype 'I64'"),
    ({"t": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 12]}}, bytes(16), None,
     r"tensor 't': data_offsets \[0, 12\] span 12 bytes but F32 \[2, 2\] needs 16"),
    ({"t": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}, bytes(16), None, r"0 <= begin <= end"),
    ({"t": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
      "u": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}, bytes(16), None, r"tensor 'u' .* overlaps"),
    ({"t": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 0]}}, b"", None, r"non-negative integers"),
    ({"t": {"dtype": "F32", "shape": [2]}}, bytes(8), None, r"exactly dtype, shape and data_offsets"),
    ({"__metadata__": {"a": 1}, **GOOD}, bytes(16), None, r"__metadata__ must map strings to strings"),
])
def test_damaged_files_are_refused_with_a_reason(tmp_path, header, data, header_len, message):
    path = _write_raw(tmp_path / "bad.safetensors", header, data, header_len)
    with pytest.raises(CheckpointError, match=rf"{path}: .*{message}"):
        SafetensorsFile(path)


def test_non_json_headers_and_tiny_files(tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(b"\x01\x02")
    with pytest.raises(CheckpointError, match="too short for a safetensors header"):
        SafetensorsFile(path)
    path.write_bytes(struct.pack("<Q", 4) + b"\xff\xfe{}")
    with pytest.raises(CheckpointError, match="not valid UTF-8 JSON"):
        SafetensorsFile(path)
    raw = b'{"t": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "t": {"dtype": "F32", "shape": [1], ' \
          b'"data_offsets": [4, 8]}}'
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(8))
    with pytest.raises(CheckpointError, match="lists tensor 't' twice"):
        SafetensorsFile(path)


def test_shapes_are_checked_against_the_config(tmp_path):
    save_file({"a": np.zeros((2, 3), np.float32), "extra": np.zeros(1, np.float32)}, str(tmp_path / "s.safetensors"))
    f = SafetensorsFile(tmp_path / "s.safetensors")
    with pytest.raises(CheckpointError) as e:
        f.check_shapes({"a": (3, 2), "b": (4,)})
    msg = str(e.value)
    assert "tensor 'a' has shape [2, 3], params.json implies [3, 2]" in msg
    assert "missing tensor 'b' (expected shape [4])" in msg
    assert "unexpected tensor 'extra' [1]" in msg


def test_generated_checkpoint_opens_and_matches_its_config(tiny_checkpoint_dir):
    ck = Checkpoint(tiny_checkpoint_dir)
    shapes = ck.config.tensor_shapes()
    assert sorted(ck.weights.names()) == sorted(shapes)
    assert all(ck.weights.dtype(n) == "BF16" for n in shapes)
    for name in ("layers.0.attention.wq.weight", "acoustic_transformer.llm_projection.weight"):
        w = ck.tensor(name)
        assert w.shape == shapes[name] and np.isfinite(w).all() and w.std() > 0
    voices = ck.voice_names()
    assert len(voices) >= 2
    for v in voices:
        assert ck.voice(v).shape == (ck.tekken.voice_num_audio_tokens[v], ck.config.backbone.dim)


def test_checkpoint_folder_errors(tmp_path, tiny_checkpoint_dir):
    with pytest.raises(CheckpointError, match="not a directory"):
        Checkpoint(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match=r"params.json: missing"):
        Checkpoint(tmp_path)
    ck = Checkpoint(tiny_checkpoint_dir)
    with pytest.raises(CheckpointError, match=r"no such voice file \(voices here: "):
        ck.voice("nobody")


def test_checkpoint_whose_params_disagree_with_its_weights(tmp_path, tiny_checkpoint_dir):
    import shutil

    copy = tmp_path / "ck"
    shutil.copytree(tiny_checkpoint_dir, copy)
    params = json.loads((copy / "params.json").read_text())
    params["hidden_dim"] += 1
    (copy / "params.json").write_text(json.dumps(params))
    with pytest.raises(CheckpointError, match=r"tensor 'layers.0.feed_forward.w1.weight' has shape \[88, 48\], "
                                              r".*params.json implies \[89, 48\]"):
        Checkpoint(copy)
