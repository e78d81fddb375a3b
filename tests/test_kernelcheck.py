"""The kernel self-test: its one-node graphs against the onnx package, its known answers against the int8
schemes onnxruntime's kernels use, and a wrong kernel (a session whose output is perturbed) caught, the
graph reopened with a fallback, or refused."""

from __future__ import annotations

import json
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import numpy_helper

from voxtral_edge import sessions
from voxtral_edge.cli import main
from voxtral_edge.errors import KernelError
from voxtral_edge.machine import cpu_features
from voxtral_edge.kernelcheck import (FALLBACKS, TOLERANCE, Family, KernelCheck, KernelWarning, dqmm_activations,
                                      graph_families, nbits_activations, pack_nbits, pack_zero_points, problems, solve)
from voxtral_edge.onnxfile import graph_nodes, model_bytes
from voxtral_edge.quant.matmul import NBitsWeight, dequantize_nbits
from voxtral_edge.quant.plans import NAMED_PLANS
from voxtral_edge.quant.rewrite import quantize_bundle
from voxtral_edge.runtime import Synthesizer


@pytest.fixture(scope="module")
def int4_bundle(tiny_bundle_dirs, tmp_path_factory):
    """The int4 plan: MatMulNBits in the backbone, DynamicQuantizeMatMul in the flow head and the codec."""
    return quantize_bundle(tiny_bundle_dirs[0], tmp_path_factory.mktemp("kernels") / "int4", "int4", progress=False)


def options():
    return sessions.session_options(1)


# -- the ONNX written and read without the onnx package ------------------------------------------------
def test_model_bytes_is_the_model_onnx_reads():
    weight = np.arange(12, dtype=np.int8).reshape(3, 4)
    data = model_bytes([("DynamicQuantizeMatMul", "com.microsoft", ["A", "B", "s"], ["Y"], {}),
                        ("Gelu", "com.microsoft", ["Y"], ["Z"], {"n": -3, "x": 0.5})],
                       {"B": weight, "s": np.array([0.25], np.float32)},
                       [("A", np.float32, ("M", 3))], [("Z", np.float32, ("M", 4))])
    model = onnx.load_from_string(data)
    onnx.checker.check_model(model)
    assert [(n.op_type, n.domain, list(n.input), list(n.output)) for n in model.graph.node] == [
        ("DynamicQuantizeMatMul", "com.microsoft", ["A", "B", "s"], ["Y"]), ("Gelu", "com.microsoft", ["Y"], ["Z"])]
    assert {a.name: onnx.helper.get_attribute_value(a) for a in model.graph.node[1].attribute} == {"n": -3, "x": 0.5}
    got = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    assert np.array_equal(got["B"], weight) and got["s"].tolist() == [0.25]
    dims = [[d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in (*model.graph.input, *model.graph.output)]
    assert dims == [["M", 3], ["M", 4]]
    assert {o.domain: o.version for o in model.opset_import} == {"": 17, "com.microsoft": 1}


def test_graph_nodes_are_the_nodes_onnx_reads_subgraphs_included(int4_bundle):
    def walk(graph):
        for node in graph.node:
            yield node
            for a in node.attribute:
                for g in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                    yield from walk(g)

    for name in ("backbone_step", "flow_head", "codec_decoder"):
        path = int4_bundle / f"{name}.onnx"
        expected = sorted((n.op_type, n.domain, tuple(n.input),
                           tuple(sorted((a.name, a.i) for a in n.attribute if a.type == onnx.AttributeProto.INT)))
                          for n in walk(onnx.load(path, load_external_data=False).graph))
        got = sorted((n.op_type, n.domain, n.inputs, tuple(sorted(n.attributes.items()))) for n in graph_nodes(path))
        assert got == expected
    # the flow head's DynamicQuantizeMatMul nodes live in its Loop's body
    assert graph_families(int4_bundle / "flow_head.onnx") == (Family("DynamicQuantizeMatMul"),)
    assert graph_families(int4_bundle / "backbone_step.onnx") == (Family("MatMulNBits", 4, 32, 4), Family("MatMulNBits", 8, 32, 4))


@settings(max_examples=30, deadline=None)
@given(bits=st.sampled_from([4, 8]), block=st.sampled_from([16, 32, 64, 128]), k=st.integers(1, 300),
       n=st.integers(1, 9), seed=st.integers(0, 2**32 - 1))
def test_packing_is_the_format_the_quantizer_reads(bits, block, k, n, seed):
    rng = np.random.default_rng(seed)
    blocks = -(-k // block)
    codes, zero = rng.integers(0, 1 << bits, size=(n, k)), rng.integers(0, 1 << bits, size=(n, blocks))
    scales = rng.random((n, blocks)).astype(np.float32)
    got = dequantize_nbits(NBitsWeight(pack_nbits(codes, bits, block), scales, pack_zero_points(zero, bits), k, n,
                                       bits, block))
    want = (codes - np.repeat(zero, block, axis=1)[:, :k]) * np.repeat(scales, block, axis=1)[:, :k]
    assert np.array_equal(got, want.T.astype(np.float32))


# -- the known answers: exact under every int8 scheme a correct kernel may use ----------------------------
def per_tensor_u8(a):
    """MLAS DynamicQuantizeMatMul: the whole tensor, asymmetric u8 (the range widened to hold 0)."""
    low, high = min(a.min(), 0.0), max(a.max(), 0.0)
    scale = (high - low) / 255
    zero = np.round(-low / scale)
    return (np.clip(np.round(a / scale) + zero, 0, 255) - zero) * scale


def per_row_s8(a):
    """KleidiAI (qai8dx): each row, asymmetric s8."""
    low, high = np.minimum(a.min(axis=1, keepdims=True), 0), np.maximum(a.max(axis=1, keepdims=True), 0)
    scale = (high - low) / 255
    zero = -128 - np.round(low / scale)
    return (np.clip(np.round(a / scale) + zero, -128, 127) - zero) * scale


def per_block_symmetric(a, block):
    """MLAS CompInt8 (blocks of the weight's block) and KleidiAI qsi8d32 (blocks of 32): symmetric s8."""
    out = np.empty_like(a)
    for start in range(0, a.shape[1], block):
        part = a[:, start:start + block]
        scale = np.abs(part).max(axis=1, keepdims=True) / 127
        out[:, start:start + block] = np.clip(np.round(part / scale), -127, 127) * scale
    return out


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 40), block=st.sampled_from([16, 32, 64, 128, 256]), extra=st.integers(1, 300),
       seed=st.integers(0, 2**32 - 1))
def test_nbits_activations_are_exact_under_every_scheme(rows, block, extra, seed):
    a = nbits_activations(np.random.default_rng(seed), rows, max(block, 32) + extra, block).astype(np.float64)
    for quantized in (per_tensor_u8(a), per_row_s8(a), per_block_symmetric(a, block),
                      *([per_block_symmetric(a, 32)] if block >= 32 else [])):
        assert np.array_equal(quantized, a)


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 40), k=st.integers(2, 300), seed=st.integers(0, 2**32 - 1))
def test_dqmm_activations_are_exact_per_tensor_and_per_row(rows, k, seed):
    a = dqmm_activations(np.random.default_rng(seed), rows, k).astype(np.float64)
    assert np.array_equal(per_tensor_u8(a), a) and np.array_equal(per_row_s8(a), a)


def test_an_ordinary_row_is_not_exact():
    """The schemes above are real quantizers (they would round ordinary activations)."""
    a = np.random.default_rng(0).standard_normal((3, 64))
    assert not np.array_equal(per_row_s8(a), a) and not np.array_equal(per_block_symmetric(a, 32), a)


def plan_families():
    found = set()
    for plan in NAMED_PLANS.values():
        for g in plan.graphs.values():
            for spec in ([g.spec] if g.spec else []) + [s for _, s in g.overrides]:
                found.add(Family("DynamicQuantizeMatMul") if spec.method == "dynamic-int8" else
                          Family("MatMulNBits", spec.bits, spec.block_size, spec.accuracy_level, not spec.symmetric))
    return sorted(found, key=lambda f: f.key)


@pytest.mark.parametrize("family", plan_families() + [Family("MatMulNBits", 4, 32, 4, True),
                                                      Family("MatMulNBits", 8, 64, 0), Family("MatMulNBits", 4, 16, 4)],
                         ids=lambda f: f.key)
def test_this_machines_kernels_give_the_known_answers(family):
    create = lambda model, opts, providers: sessions.create_session(model, opts, providers)
    verdict = solve(family, options, {}, create)
    assert verdict.passed, f"{family.describe()}: off by {verdict.error:.3g} on {verdict.detail}"


def test_the_problems_cover_one_row_several_and_more_than_a_tile():
    for family in (Family("DynamicQuantizeMatMul"), Family("MatMulNBits", 4, 128, 4)):
        ps = problems(family)
        assert [a.shape[0] for p in ps for a, _ in p.cases] == [1, 5, 33] * len(ps)
    ks = [p.cases[0][0].shape[1] for p in problems(Family("MatMulNBits", 4, 128, 4))]
    assert ks[0] % 128 == 0 and ks[1] % 128 != 0  # whole blocks, and a padded last one


# -- a wrong kernel: caught, a fallback, or a refusal ----------------------------------------------------
class Perturbed:
    """A session whose output is wrong the way SME's DynamicQuantizeMatMul was under qemu 7.2 (rows after
    the first off), or by `relative` of its peak at one element."""

    def __init__(self, session, relative: float | None = None):
        self.session, self.relative = session, relative

    def run(self, names, feeds):
        y = [np.array(o, copy=True) for o in self.session.run(names, feeds)]
        if self.relative is None:
            y[0][1:] *= 0.5
            y[0][0, 1:] += 1.0
        else:
            y[0].flat[y[0].size // 2] += self.relative * np.abs(y[0]).max()
        return y


def wrong_kernel(op_type="DynamicQuantizeMatMul", fixed_by="mlas.disable_kleidiai", relative=None):
    """A session factory for the self-test where `op_type`'s kernel is wrong unless the session config has
    `fixed_by` (None: nothing fixes it)."""
    def create(model, opts, providers):
        session = sessions.create_session(model, opts, providers)
        try:
            fixed = fixed_by is not None and opts.get_session_config_entry(fixed_by) == "1"
        except Exception:  # not set
            fixed = False
        return session if fixed or op_type.encode() not in model else Perturbed(session, relative)
    return create


@pytest.mark.parametrize("relative, caught", [(None, True), (1e-3, True), (1e-7, False)])
def test_a_perturbed_kernel_is_caught_and_rounding_is_not(relative, caught, tmp_path):
    check = KernelCheck(wrong_kernel(relative=relative), cache_path=tmp_path / "verdicts.json")
    verdict = check.verdict(Family("DynamicQuantizeMatMul"), options, {}, 1)
    assert verdict.passed is not caught
    if relative is not None:
        assert verdict.error == pytest.approx(relative, rel=0.05)  # float32 rounding of the perturbed output
    assert check.verdict(Family("MatMulNBits", 4, 32, 4), options, {}, 1).passed


def test_a_wrong_kernel_falls_back_and_the_bundle_speaks_as_before(int4_bundle, tmp_path, monkeypatch):
    reference = Synthesizer.open(int4_bundle, threads=1)
    assert reference.kernel_fallbacks == {}
    expected = reference.synthesize("Turn left.", "casual_male", seed=3, max_frames=6)
    check = KernelCheck(wrong_kernel(), cache_path=tmp_path / "verdicts.json")
    monkeypatch.setattr(sessions, "KERNELS", check)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        synth = Synthesizer.open(int4_bundle, threads=1)
    said = [str(w.message) for w in caught if issubclass(w.category, KernelWarning)]
    assert len(said) == 1  # once, though two graphs use the kernel
    assert "DynamicQuantizeMatMul" in said[0] and "mlas.disable_kleidiai=1" in said[0]
    assert f"wrong on this CPU ({cpu_features().describe()}" in said[0]  # which kernel, which CPU features
    # the graphs with the wrong kernel open with the fallback, read back from their sessions; the others do not
    assert synth.kernel_fallbacks == {"flow_head": {"mlas.disable_kleidiai": "1"},
                                      "codec_decoder": {"mlas.disable_kleidiai": "1"}}
    result = synth.synthesize("Turn left.", "casual_male", seed=3, max_frames=6)
    # on this CPU the option changes no kernel: the same speech
    assert np.array_equal(result.codes, expected.codes) and np.array_equal(result.audio, expected.audio)
    failed = [v for v in check.verdicts.values() if not v.passed]
    assert [v.family.op_type for v in failed] == ["DynamicQuantizeMatMul"] and failed[0].error > 0.1


def test_a_kernel_nothing_fixes_refuses_the_bundle(int4_bundle, tmp_path, monkeypatch):
    monkeypatch.setattr(sessions, "KERNELS", KernelCheck(wrong_kernel(fixed_by=None), cache_path=tmp_path / "v.json"))
    with pytest.raises(KernelError) as e:
        Synthesizer.open(int4_bundle, threads=1)
    message = str(e.value)
    assert "flow_head.onnx" in message and "DynamicQuantizeMatMul" in message and "refusing" in message
    assert all(label in message for label, _ in FALLBACKS)


def test_a_fallback_that_is_slow_is_used_when_it_is_the_one_that_passes(int4_bundle, tmp_path, monkeypatch):
    check = KernelCheck(wrong_kernel(fixed_by="session.disable_prepacking"), cache_path=tmp_path / "v.json")
    monkeypatch.setattr(sessions, "KERNELS", check)
    with pytest.warns(KernelWarning, match="prepacking disabled"):
        synth = Synthesizer.open(int4_bundle, threads=1)
    assert synth.kernel_fallbacks["flow_head"] == {"session.disable_prepacking": "1"}


def test_verdicts_are_kept_per_machine_and_onnxruntime(tmp_path, monkeypatch):
    path = tmp_path / "verdicts.json"
    first = KernelCheck(wrong_kernel(), cache_path=path)
    with pytest.warns(KernelWarning):
        assert first.session_config("flow_head", tmp_path / "flow_head.onnx", [Family("DynamicQuantizeMatMul")], options, 1) \
            == {"mlas.disable_kleidiai": "1"}
    assert first.solved == 2 and json.loads(path.read_text())["format"] == "voxtral-edge-kernel-verdicts"
    again = KernelCheck(wrong_kernel(), cache_path=path)  # the next process: nothing solved again
    with pytest.warns(KernelWarning):
        assert again.session_config("flow_head", tmp_path / "x.onnx", [Family("DynamicQuantizeMatMul")], options, 1) \
            == {"mlas.disable_kleidiai": "1"}
    assert again.solved == 0
    from voxtral_edge import kernelcheck

    fingerprint = kernelcheck.machine_fingerprint()
    monkeypatch.setattr(kernelcheck, "machine_fingerprint", lambda: {**fingerprint, "onnxruntime": "another"})
    other = KernelCheck(sessions.create_session, cache_path=path)  # another onnxruntime: solved again, and right
    assert other.session_config("flow_head", tmp_path / "x.onnx", [Family("DynamicQuantizeMatMul")], options, 1) == {}
    assert other.solved == 1


# -- doctor ---------------------------------------------------------------------------------------------
def test_doctor_reports_the_bundles_kernels(int4_bundle, capsys):
    assert main(["doctor", "--bundle", str(int4_bundle), "--threads", "1", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["machine"] == cpu_features().machine and report["onnxruntime"] == ort.__version__
    rows = {r["key"]: r for r in report["kernels"]}
    assert set(rows) == {"DynamicQuantizeMatMul", "MatMulNBits/bits=4/block=32/level=4/zero_points=0",
                         "MatMulNBits/bits=8/block=32/level=4/zero_points=0"}
    assert rows["DynamicQuantizeMatMul"]["graphs"] == ["flow_head", "codec_decoder"]
    assert all(r["passed"] and r["tried"][0]["error"] <= TOLERANCE for r in rows.values())


def test_doctor_shows_a_wrong_kernel_and_its_fallback(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(sessions, "KERNELS", KernelCheck(wrong_kernel(), cache_path=tmp_path / "v.json"))
    assert main(["doctor"]) == 0  # wrong, but a fallback passes
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if "DynamicQuantizeMatMul" in x)
    assert line.split()[0] == "WRONG" and "int4 codec_decoder" in line
    assert "with KleidiAI disabled (mlas.disable_kleidiai=1): ok" in out
    monkeypatch.setattr(sessions, "KERNELS", KernelCheck(wrong_kernel(fixed_by=None), cache_path=tmp_path / "w.json"))
    assert main(["doctor"]) == 1
    assert "nothing passes" in capsys.readouterr().out
