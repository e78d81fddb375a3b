"""Saved optimized graphs: the same codes and audio as the bundle's own graphs, and a cache never trusted blindly."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import onnxruntime
import pytest

from voxtral_edge import optimized
from voxtral_edge.cli import main
from voxtral_edge.export.bundle import export_bundle
from voxtral_edge.export.checkpoint import Checkpoint
from voxtral_edge.export.reference import Reference
from voxtral_edge.manifest import GRAPHS, Manifest
from voxtral_edge.optimized import cache_folders, saved_graph
from voxtral_edge.runtime import Synthesizer

TEXT = "Der schnelle braune Fuchs springt über den faulen Hund."


@pytest.fixture(scope="module")
def int4_bundle(tiny_checkpoint_dirs, tmp_path_factory):
    """A quantized tiny bundle: MatMulNBits and DynamicQuantizeMatMul, whose weights onnxruntime packs."""
    return export_bundle(tiny_checkpoint_dirs[0], tmp_path_factory.mktemp("int4") / "int4", max_context=256,
                         plan="int4", progress=False)


@pytest.fixture
def fresh(tmp_path):
    """Copy a bundle without its saved graphs."""
    def copy(bundle):
        out = tmp_path / bundle.name
        shutil.copytree(bundle, out, ignore=shutil.ignore_patterns("optimized"))
        return out
    return copy


@pytest.fixture
def opened(monkeypatch):
    """The graph files sessions are created from, and whether graph optimizations were on."""
    seen = []
    real = onnxruntime.InferenceSession

    def recording(path, options=None, *args, **kwargs):
        level = options.graph_optimization_level if options is not None else None
        seen.append((str(path), level == onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL))
        return real(path, options, *args, **kwargs)

    monkeypatch.setattr(onnxruntime, "InferenceSession", recording)
    return seen


def _speak(bundle, noise, **options):
    result = Synthesizer.open(bundle, **options).synthesize(TEXT, "neutral_female", noise=noise, steps=7,
                                                             cfg_alpha=1.2)
    return result.codes, result.audio


def _noise(n=30):
    return np.random.default_rng(5).standard_normal((n, 5)).astype(np.float32)


def test_saved_graphs_give_the_reference_codes_and_audio(tiny_checkpoint_dirs, tiny_bundle_dirs, fresh, opened):
    bundle = fresh(tiny_bundle_dirs[0])
    want_codes, want_audio = Reference(Checkpoint(tiny_checkpoint_dirs[0])).synthesize(
        TEXT, "neutral_female", _noise(), steps=7, cfg_alpha=1.2)
    first = _speak(bundle, _noise(), saved_graphs=True)  # optimizes, saves, and runs the session it optimized
    assert all(saved_graph(Manifest.load(bundle), g, cache_folders(bundle)[0]) for g in GRAPHS)
    opened.clear()
    second = _speak(bundle, _noise())  # from the saved graphs, optimizer off
    assert sorted(opened) == sorted((str(cache_folders(bundle)[0] / f"{g}.onnx"), True) for g in GRAPHS)
    plain = _speak(bundle, _noise(), saved_graphs=False)
    for codes, audio in (first, second, plain):
        np.testing.assert_array_equal(codes, want_codes)
        assert np.abs(audio - want_audio).max() <= 1e-3
    np.testing.assert_array_equal(second[1], plain[1])


def test_saved_packed_weights_give_the_same_codes_and_audio(int4_bundle, fresh, opened):
    bundle = fresh(int4_bundle)
    plain = _speak(bundle, _noise(), saved_graphs=False)
    _speak(bundle, _noise(), saved_graphs=True)
    opened.clear()
    saved = _speak(bundle, _noise())
    assert all(disabled and "optimized" in path for path, disabled in opened)
    data = onnx.load(str(cache_folders(bundle)[0] / "backbone_step.onnx"), load_external_data=False)
    packed = [t.name for t in data.graph.initializer if any(e.key.startswith("prepacked") for e in t.external_data)]
    assert any("wqkv" in name for name in packed)  # the MatMulNBits weights were saved packed
    np.testing.assert_array_equal(saved[0], plain[0])
    np.testing.assert_array_equal(saved[1], plain[1])


def test_another_machine_or_onnxruntime_gets_its_own(tiny_bundle_dirs, fresh, monkeypatch):
    bundle = fresh(tiny_bundle_dirs[1])
    Synthesizer.open(bundle, saved_graphs=True)
    here = cache_folders(bundle)[0]
    real = optimized.machine_fingerprint
    monkeypatch.setattr(optimized, "machine_fingerprint", lambda: {**real(), "cpu_flags": "neon asimd"})
    there = cache_folders(bundle)[0]
    assert there != here and saved_graph(Manifest.load(bundle), "backbone_step", there) is None
    Synthesizer.open(bundle, saved_graphs=True)
    assert saved_graph(Manifest.load(bundle), "backbone_step", there)
    # a record copied from another machine into this machine's folder is not used either
    shutil.copy(here / "flow_head.json", there / "flow_head.json")
    assert saved_graph(Manifest.load(bundle), "flow_head", there) is None


def _flip(path, offset=None):
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2 if offset is None else offset] ^= 0xFF
    path.write_bytes(bytes(raw))


def test_a_damaged_saved_graph_is_made_again(tiny_bundle_dirs, fresh, opened):
    bundle = fresh(tiny_bundle_dirs[2])
    plain = _speak(bundle, _noise(), saved_graphs=False)
    _speak(bundle, _noise(), saved_graphs=True)
    folder = cache_folders(bundle)[0]
    _flip(folder / "codec_decoder.onnx.data")
    assert saved_graph(Manifest.load(bundle), "codec_decoder", folder) is None  # stat changed, sha256 differs
    opened.clear()
    again = _speak(bundle, _noise())
    assert (str(Manifest.load(bundle).path("codec_decoder.onnx")), False) in opened  # made from the bundle
    assert saved_graph(Manifest.load(bundle), "codec_decoder", folder)
    np.testing.assert_array_equal(again[1], plain[1])


def test_a_record_for_other_bundle_files_is_not_used(tiny_bundle_dirs, fresh):
    bundle = fresh(tiny_bundle_dirs[0])
    Synthesizer.open(bundle, saved_graphs=True)
    folder = cache_folders(bundle)[0]
    record = json.loads((folder / "flow_head.json").read_text())
    record["sources"]["flow_head.onnx.data"] = "0" * 64  # as if made from an older export of the bundle
    (folder / "flow_head.json").write_text(json.dumps(record))
    assert saved_graph(Manifest.load(bundle), "flow_head", folder) is None
    record["sources"] = {"flow_head.onnx": record["sources"]["flow_head.onnx"]}
    record["files"]["../../flow_head.onnx"] = record["files"]["flow_head.onnx"]
    (folder / "flow_head.json").write_text(json.dumps(record))
    assert saved_graph(Manifest.load(bundle), "flow_head", folder) is None


def test_packed_weights_onnxruntime_refuses_are_made_again(int4_bundle, fresh):
    """Our record vouches for the files (re-recorded over the damage), onnxruntime's own check refuses them."""
    bundle = fresh(int4_bundle)
    plain = _speak(bundle, _noise(), saved_graphs=False)
    Synthesizer.open(bundle, saved_graphs=True)
    folder = cache_folders(bundle)[0]
    model = onnx.load(str(folder / "backbone_step.onnx"), load_external_data=False)
    entry = next({e.key: e.value for e in t.external_data} for t in model.graph.initializer
                 if any(e.key.startswith("prepacked") and "MatMulNBits" in e.value for e in t.external_data))
    blob = next(v for k, v in entry.items() if k.startswith("prepacked")).split("|")[1]
    _flip(folder / "backbone_step.onnx.data", int(blob.split(";")[0]) + 5)
    record = json.loads((folder / "backbone_step.json").read_text())
    record["files"]["backbone_step.onnx.data"]["stat"] = optimized.file_stat(folder / "backbone_step.onnx.data")
    (folder / "backbone_step.json").write_text(json.dumps(record))
    with pytest.warns(UserWarning, match="onnxruntime refused this saved graph"):
        again = _speak(bundle, _noise())
    np.testing.assert_array_equal(again[0], plain[0])
    np.testing.assert_array_equal(again[1], plain[1])
    assert saved_graph(Manifest.load(bundle), "backbone_step", folder)  # and saved anew


def test_a_bundle_folder_that_cannot_be_written_saves_in_the_user_cache(tiny_bundle_dirs, fresh, user_cache):
    bundle = fresh(tiny_bundle_dirs[0])
    (bundle / "optimized").write_text("")  # a file where the folder would go: nothing can be made there
    Synthesizer.open(bundle, saved_graphs=True)
    folder = cache_folders(bundle)[1]
    assert user_cache in folder.parents and all(saved_graph(Manifest.load(bundle), g, folder) for g in GRAPHS)


def test_nowhere_to_save_warns_and_still_runs(tiny_bundle_dirs, fresh, monkeypatch, tmp_path):
    bundle = fresh(tiny_bundle_dirs[0])
    (bundle / "optimized").write_text("")
    blocked = tmp_path / "blocked"
    blocked.write_text("")
    monkeypatch.setenv("VOXTRAL_EDGE_CACHE", str(blocked))
    with pytest.warns(UserWarning, match="cannot save the optimized") as caught:
        synth = Synthesizer.open(bundle, verify=False, saved_graphs=True)
    assert {str(w.message).split(" graph")[0].split()[-1] for w in caught} == set(GRAPHS)
    assert synth.synthesize("Hallo", "casual_male", seed=0, max_frames=2).codes.shape == (2, 6)


def test_without_optimize_a_bundle_opens_from_its_own_graphs(tiny_bundle_dirs, fresh, opened):
    bundle = fresh(tiny_bundle_dirs[2])
    Synthesizer.open(bundle)
    Synthesizer.open(bundle)
    assert sorted(opened) == sorted([(str(Manifest.load(bundle).path(f"{g}.onnx")), False) for g in GRAPHS] * 2)
    assert not (bundle / "optimized").exists()


def test_optimize_command(tiny_bundle_dirs, fresh, capsys):
    bundle = fresh(tiny_bundle_dirs[0])
    assert main(["optimize", str(bundle)]) == 0
    out = capsys.readouterr().out
    assert all(saved_graph(Manifest.load(bundle), g, cache_folders(bundle)[0]) for g in GRAPHS)
    assert all(f"{g}: made" in out for g in GRAPHS), out
    assert main(["optimize", str(bundle)]) == 0
    out = capsys.readouterr().out
    assert all(saved_graph(Manifest.load(bundle), g, cache_folders(bundle)[0]) for g in GRAPHS)
    assert all(f"{g}: already saved" in out for g in GRAPHS), out


def test_a_copied_bundle_uses_its_saved_graphs_after_one_hash(tiny_bundle_dirs, fresh, tmp_path, opened, monkeypatch):
    bundle = fresh(tiny_bundle_dirs[1])
    Synthesizer.open(bundle, saved_graphs=True)
    copy = tmp_path / "copy" / "bundle"
    shutil.copytree(bundle, copy)  # new inodes: each saved file's stat differs from its record
    hashed = []
    real = optimized.sha256_file
    monkeypatch.setattr(optimized, "sha256_file", lambda path, *a, **k: hashed.append(path.name) or real(path, *a, **k))
    opened.clear()
    Synthesizer.open(copy)
    assert all(disabled and str(copy / "optimized") in path for path, disabled in opened)
    assert sorted(hashed) == sorted(f"{g}.onnx{ext}" for g in GRAPHS for ext in ("", ".data"))
    hashed.clear()
    Synthesizer.open(copy)  # the records took the new stat
    assert hashed == []


@pytest.mark.parametrize("field, value", [("onnxruntime", "1.31.0"), ("machine", "aarch64"), ("cpu_flags", "neon")])
def test_a_record_made_by_another_onnxruntime_or_machine_is_made_again(int4_bundle, fresh, opened, field, value):
    """A saved graph whose record names another onnxruntime version or CPU (copied here with the bundle, say)
    is neither trusted nor given to onnxruntime: it is made again on this machine."""
    bundle = fresh(int4_bundle)
    plain = _speak(bundle, _noise(), saved_graphs=False)
    Synthesizer.open(bundle, saved_graphs=True)
    folder = cache_folders(bundle)[0]
    record = json.loads((folder / "backbone_step.json").read_text())
    record["machine"][field] = value
    (folder / "backbone_step.json").write_text(json.dumps(record))
    assert saved_graph(Manifest.load(bundle), "backbone_step", folder) is None
    opened.clear()
    again = _speak(bundle, _noise())
    assert (str(Manifest.load(bundle).path("backbone_step.onnx")), False) in opened  # made from the bundle
    assert json.loads((folder / "backbone_step.json").read_text())["machine"] == optimized.machine_fingerprint()
    np.testing.assert_array_equal(again[0], plain[0])
    np.testing.assert_array_equal(again[1], plain[1])


def test_a_truncated_saved_graph_is_made_again(int4_bundle, fresh, opened):
    bundle = fresh(int4_bundle)
    plain = _speak(bundle, _noise(), saved_graphs=False)
    Synthesizer.open(bundle, saved_graphs=True)
    folder = cache_folders(bundle)[0]
    data = folder / "backbone_step.onnx.data"
    with open(data, "r+b") as f:
        f.truncate(data.stat().st_size // 2)  # as a write cut short by a full disk or a power loss leaves it
    assert saved_graph(Manifest.load(bundle), "backbone_step", folder) is None
    opened.clear()
    again = _speak(bundle, _noise())
    assert (str(Manifest.load(bundle).path("backbone_step.onnx")), False) in opened
    assert saved_graph(Manifest.load(bundle), "backbone_step", folder)  # and saved whole again
    np.testing.assert_array_equal(again[0], plain[0])
    np.testing.assert_array_equal(again[1], plain[1])
