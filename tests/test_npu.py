"""The NPU plans (Qualcomm HTP through onnxruntime's QNN EP, whose HTP backend simulates the NPU on this CPU):
the NPU form against the numpy reference, a tiny w8a16 bundle whole on the simulator, refusals, compiled
contexts, deterministic quantization, the estimate by hand.

The simulator tests need onnxruntime-qnn (the `[qnn]` extra, installed by .ci/run); they run in the default
suite (about a minute on 2 cores). Marked `npu`: `pytest -m "not npu"` leaves them out.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest

from voxtral_edge.errors import BundleError, UsageError
from voxtral_edge.export.bundle import export_bundle
from voxtral_edge.export.checkpoint import Checkpoint
from voxtral_edge.export.reference import Reference
from voxtral_edge.manifest import MANIFEST, Manifest
from voxtral_edge.quant.htp import NpuShapes, export_npu_bundle
from voxtral_edge.quant.plans import load_plan
from voxtral_edge.runtime import Synthesizer
from voxtral_edge.sessions import nodes_on_cpu, npu_graphs

TEXT = "Turn left in two hundred metres, then keep right."
SHAPES = NpuShapes(rows=8, frames=4)
PARTS = NpuShapes(rows=8, frames=4, parts=2)  # the backbone in two graphs (layers 0-1, 2), as at full size
npu = pytest.mark.npu


@pytest.fixture(scope="module")
def stage_bundle(tiny_checkpoint_dirs, tmp_path_factory):
    """The NPU form of tiny checkpoint 0 in float32 (the first step of an NPU export)."""
    return export_bundle(tiny_checkpoint_dirs[0], tmp_path_factory.mktemp("npu") / "stage", max_context=256,
                         plan="w8a16", npu_shapes=SHAPES, progress=False, stage=True)


@pytest.fixture(scope="module")
def w8a16_bundle(tiny_checkpoint_dirs, tmp_path_factory):
    """Tiny checkpoint 0 exported with the w8a16 plan, its backbone in two parts (8 calibration frames per
    language, for speed)."""
    return export_npu_bundle(tiny_checkpoint_dirs[0], tmp_path_factory.mktemp("npu") / "w8a16", load_plan("w8a16"),
                             max_context=256, shapes=PARTS, calibration_frames=8, progress=False)


def test_the_npu_form_in_float32_speaks_the_references_codes(tiny_checkpoint_dirs, tiny_bundle_dirs, stage_bundle):
    ref = Reference(Checkpoint(tiny_checkpoint_dirs[0]))
    synth = Synthesizer.open(stage_bundle)
    cpu = Synthesizer.open(tiny_bundle_dirs[0])
    x = cpu.prompt_embeddings(cpu.prompt(TEXT, "casual_male"), "casual_male")
    (h_npu, logits_npu), (h_cpu, logits_cpu) = synth.backbone(x, 0), cpu.backbone(x, 0)
    assert logits_npu.shape == logits_cpu.shape and np.array_equal(np.isinf(logits_npu), np.isinf(logits_cpu))
    np.testing.assert_allclose(logits_npu, logits_cpu, atol=1e-4)
    np.testing.assert_allclose(h_npu, h_cpu, atol=1e-4)
    noise = np.random.default_rng(7).standard_normal((20, ref.config.audio.n_acoustic_codebook)).astype(np.float32)
    want_codes, want_audio = ref.synthesize(TEXT, "casual_male", noise, steps=7, cfg_alpha=1.2)
    result = synth.synthesize(TEXT, "casual_male", noise=noise, normalize=False)
    np.testing.assert_array_equal(result.codes, want_codes)
    assert np.abs(result.audio - want_audio).max() <= 1e-3
    manifest = Manifest.load(stage_bundle).data
    assert manifest["graphs"]["backbone_step"]["htp"]["rows"] == 8
    assert manifest["graphs"]["flow_head"]["htp"]["steps"] == 7
    assert manifest["graphs"]["codec_decoder"]["htp"]["frames"] == 4


def test_a_backbone_in_parts_speaks_the_same(tiny_checkpoint_dirs, tiny_bundle_dirs, tmp_path):
    parted = export_bundle(tiny_checkpoint_dirs[0], tmp_path / "parts", max_context=256, plan="w8a16",
                           npu_shapes=PARTS, progress=False, stage=True)
    parts = Manifest.load(parted).data["graphs"]["backbone_step"]["htp"]["parts"]
    assert [p["layers"] for p in parts] == [[0, 2], [2, 3]]
    assert parts[0]["outputs"][-1] == "hidden_out" and parts[1]["inputs"][0] == "hidden_in"
    want = Synthesizer.open(tiny_bundle_dirs[0]).synthesize(TEXT, "casual_male", seed=4, max_frames=6)
    got = Synthesizer.open(parted).synthesize(TEXT, "casual_male", seed=4, max_frames=6)
    np.testing.assert_array_equal(got.codes, want.codes)


def test_the_npu_codec_streams_any_chunking_as_the_whole_decode(stage_bundle):
    synth = Synthesizer.open(stage_bundle)
    whole = synth.synthesize(TEXT, "casual_male", seed=3, max_frames=11)
    for chunk in (1, 3, 5):  # fewer frames than the graph's 4 are decoded padded, then again with the next
        streamed = np.concatenate(list(synth.stream(TEXT, "casual_male", seed=3, max_frames=11, chunk_frames=chunk)))
        np.testing.assert_allclose(streamed, whole.audio, atol=1e-5)


def test_the_npu_flow_head_is_compiled_for_its_steps(stage_bundle):
    synth = Synthesizer.open(stage_bundle)
    with pytest.raises(UsageError, match="compiled for 7 Euler steps"):
        synth.synthesize(TEXT, "casual_male", seed=0, steps=4, max_frames=2)


def test_provider_lists(tiny_bundle_dirs):
    assert npu_graphs(("qnn",)) == ("backbone_step", "flow_head", "codec_decoder")
    assert npu_graphs(("qnn:codec,flow",)) == ("flow_head", "codec_decoder")
    assert npu_graphs(("cpu",)) == ()
    with pytest.raises(UsageError, match="unknown graph 'head'"):
        npu_graphs(("qnn:head",))
    with pytest.raises(UsageError, match="only qnn takes a graph list"):
        npu_graphs(("cpu:flow",))


def test_the_estimate_by_hand(tiny_bundle_dirs):
    from voxtral_edge.estimate_npu import npu_frame_estimate
    from voxtral_edge.profiles import load_profile

    profile = load_profile("qualcomm-sa8255p")
    manifest = Manifest.load(tiny_bundle_dirs[0]).data
    files, b = manifest["files"], manifest["model"]["backbone"]
    size = lambda g: files[f"{g}.onnx"]["size"] + files[f"{g}.onnx.data"]["size"]  # noqa: E731
    ms_per_gb = 1000 / 17.47 / 1.61 * 102.4 / 76.8  # the SA8775P's Llama 3B, scaled to the SA8255P's bandwidth
    kv = 2 * b["n_layers"] * b["n_kv_heads"] * b["head_dim"] * 2 * 256 / 1e9
    e = npu_frame_estimate(manifest, profile, steps=7, chunk_frames=4)["npu"]  # fp32 files: parameters / 4
    assert profile.memory_bandwidth_gbs == 76.8 and profile.npu.runs[0].tokens_per_s == 17.47
    assert e["backbone_ms"] == pytest.approx((size("backbone_step") / 4 / 1e9 + kv) * ms_per_gb)
    assert e["flow_ms"] == pytest.approx(7 * size("flow_head") / 4 / 1e9 * ms_per_gb)
    assert e["codec_ms"] == pytest.approx(size("codec_decoder") / 4 / 1e9 * ms_per_gb / 4)
    assert e["rtf"] == pytest.approx((e["backbone_ms"] + e["flow_ms"] + e["codec_ms"]) / 80)


@npu
def test_w8a16_runs_whole_on_the_htp_simulator_close_to_float32(tiny_bundle_dirs, w8a16_bundle):
    manifest = Manifest.load(w8a16_bundle).data
    assert len(manifest["graphs"]["backbone_step"]["htp"]["parts"]) == 2
    kv = manifest["graphs"]["backbone_step"]["inputs"]["past_key_0"]
    assert kv["dtype"] == "uint16" and manifest["graphs"]["backbone_step"]["outputs"]["new_key_0"]["dtype"] == "uint16"
    cal = json.loads((w8a16_bundle / "calibration.json").read_text())
    assert sorted(cal["texts"]) == sorted(["en", "fr", "es", "pt", "it", "nl", "de", "hi", "ar"])
    ref = Synthesizer.open(tiny_bundle_dirs[0])
    htp = Synthesizer.open(w8a16_bundle, providers=("qnn",))
    assert {g: nodes_on_cpu(s) for g, s in htp.sessions.items()} == {g: [] for g in htp.sessions}
    noise = np.random.default_rng(5).standard_normal((6, 5)).astype(np.float32)
    want = ref.synthesize(TEXT, "casual_male", noise=noise)
    got = htp.teacher_forced(want.spoken_text, "casual_male", want.codes, noise)
    assert np.mean(got[:, 0] == want.codes[:, 0]) >= 0.8  # measured: 1.0 (tiny, v73 simulator)
    assert np.mean(np.abs(got[:, 1:] - want.codes[:, 1:]) <= 1) >= 0.95  # measured: 1.0
    audio, reference_audio = htp.decode(want.codes), ref.decode(want.codes)
    snr = 10 * np.log10(np.sum(reference_audio ** 2) / np.sum((audio - reference_audio) ** 2))
    assert snr >= 20  # measured: 36 dB


@npu
def test_a_graph_with_ops_the_htp_lacks_is_refused_naming_them(tiny_bundle_dirs):
    from voxtral_edge.qnn import QnnRefusal

    flow = onnx.load(str(tiny_bundle_dirs[0] / "flow_head.onnx"), load_external_data=False)
    loop = next(n.name for n in flow.graph.node if n.op_type == "Loop")  # the QNN EP takes no Loop
    with pytest.raises(QnnRefusal, match=r"flow_head.onnx: the NPU \(QNN HTP\) cannot run this graph whole") as e:
        Synthesizer.open(tiny_bundle_dirs[0], providers=("qnn:flow",))
    assert ("Loop", loop) in e.value.blockers
    with pytest.warns(UserWarning, match=r"flow_head.onnx: \d+ node\(s\) run on the CPU, not the NPU"):
        synth = Synthesizer.open(tiny_bundle_dirs[0], providers=("qnn:flow",), allow_fallback=True)
    assert ("Loop", loop) in nodes_on_cpu(synth.sessions["flow_head"])


@npu
def test_a_compiled_bundle_opens_for_its_soc_and_qnn_only(w8a16_bundle, tmp_path):
    from voxtral_edge.qnn import compile_bundle, qnn_version

    out = tmp_path / "sa8255p"
    report = compile_bundle(w8a16_bundle, "sa8255p", out, progress=False)
    manifest = Manifest.load(out).data
    for graph in ("backbone_step", "flow_head", "codec_decoder"):
        units = manifest["graphs"][graph]["htp"].get("parts") or [manifest["graphs"][graph]]
        for unit in units:
            compiled = unit["compiled"]
            assert (compiled["soc"], compiled["htp_arch"], compiled["qnn_version"]) == ("sa8255p", 73, qnn_version())
        assert sum((out / u["compiled"]["context"]).stat().st_size for u in units) == report[graph]["context_bytes"] > 0
    assert report["backbone_step"]["parts"] == 2
    synth = Synthesizer.open(out, providers=("qnn",), soc="sa8255p")
    assert len(synth.synthesize(TEXT, "casual_male", seed=0, max_frames=2).codes) == 2
    with pytest.raises(BundleError, match=r"compiled for sa8255p \(HTP v73\), but this run is for sa8295p \(HTP v68\)"):
        Synthesizer.open(out, providers=("qnn",), soc="sa8295p")
    with pytest.raises(UsageError, match="compiled for the NPU"):
        Synthesizer.open(out)
    other = tmp_path / "other-qnn"  # as if compiled with another QNN: refused before onnxruntime reads it
    shutil.copytree(out, other)
    data = json.loads((other / MANIFEST).read_text())
    data["graphs"]["flow_head"]["compiled"].update(qnn_version="2.50.40", onnxruntime_qnn="2.6.0")
    (other / MANIFEST).write_text(json.dumps(data))
    with pytest.raises(BundleError, match=rf"compiled with QNN 2.50.40 \(onnxruntime-qnn 2.6.0\), but QNN "
                                          rf"{qnn_version()} is installed"):
        Synthesizer.open(other, providers=("qnn",), soc="sa8255p")


@npu
def test_the_same_calibration_gives_the_same_bundle_bytes(tiny_checkpoint_dirs, tmp_path):
    hashes = []
    for name in ("a", "b"):
        bundle = export_npu_bundle(tiny_checkpoint_dirs[1], tmp_path / name, load_plan("w8a16"), max_context=64,
                                   shapes=NpuShapes(rows=4, frames=2), calibration_frames=4, progress=False)
        hashes.append({f: e["sha256"] for f, e in Manifest.load(bundle).data["files"].items()})
    assert hashes[0] == hashes[1] and "backbone_step.onnx.data" in hashes[0]


def test_a_toml_plan_puts_graphs_on_the_npu(tmp_path):
    from voxtral_edge.errors import ConfigError

    path = tmp_path / "mixed.toml"
    path.write_text('[backbone_step]\nmethod = "nbits"\n[flow_head]\nmethod = "qdq"\n[codec_decoder]\nmethod = "qdq"\n'
                    'bits = 4\n')
    plan = load_plan(path)
    assert plan.npu_graphs == ("flow_head", "codec_decoder")
    assert (plan.graph("flow_head").precision, plan.graph("codec_decoder").precision) == ("w8a16", "w4a16")
    path.write_text('[flow_head]\nmethod = "qdq"\nskip = ["x"]\n')
    with pytest.raises(ConfigError, match=r'\[flow_head\] skip: does not apply to method "qdq"'):
        load_plan(path)
    assert load_plan("int4-w8a16").npu_graphs == ("flow_head", "codec_decoder")
