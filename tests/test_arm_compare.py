"""benchmarks/arm/compare.py's logic: comparing two runs, the report line, which tests run in the Arm root,
and reading onnxruntime's profile. The emulated runs themselves are a benchmark (benchmarks/arm/run.sh)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "arm" / "compare.py"
_spec = importlib.util.spec_from_file_location("arm_compare", _PATH)
compare = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = compare  # dataclasses look their module up while it runs
_spec.loader.exec_module(compare)


def run(frames: int, codebooks: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 7, (frames, codebooks))
    audio = rng.uniform(-0.5, 0.5, frames * 10).astype(np.float32)
    return codes, audio


def test_identical_runs_agree_and_pass():
    codes, audio = run(4)
    c = compare.compare_runs(codes, audio, codes.copy(), audio.copy())
    assert (c.frames, c.codes_equal, c.codes_total, c.first_differing_frame) == (4, 12, 12, None)
    assert c.max_audio_error == 0 and c.audio_peak == float(np.abs(audio).max())
    assert c.identical_codes and c.passes()
    line = compare.format_line("tiny", "int4", "max", c)
    assert line.split()[:3] == ["tiny", "int4", "max"]
    assert "frames   4" in line and "codes 12/12 (100.0%, identical)" in line and line.endswith("ok")


def test_a_differing_code_is_found_with_its_frame():
    codes, audio = run(4)
    other = codes.copy()
    other[2, 1] += 1
    other[3, 0] += 1
    c = compare.compare_runs(codes, audio, other, audio)
    assert (c.codes_equal, c.first_differing_frame) == (10, 2)
    assert not c.identical_codes and not c.passes()
    line = compare.format_line("small", "fp32", "cortex-a53", c)
    assert "codes 10/12 (83.3%, first differ at frame 2)" in line and line.endswith("DIFFERS")


def test_audio_error_is_the_largest_sample_difference_against_the_tolerance():
    codes, audio = run(4)
    other = audio.copy()
    other[7] += 3e-4
    other[3] -= 5e-5
    c = compare.compare_runs(codes, audio, codes, other)
    assert abs(c.max_audio_error - 3e-4) < 1e-7
    assert not c.passes(1e-4) and c.passes(1e-3)
    assert "max audio error 3.00e-04" in compare.format_line("tiny", "int8", "max", c, tolerance=1e-3)


def test_runs_of_different_length_compare_what_both_made():
    codes, audio = run(5)
    c = compare.compare_runs(codes, audio, codes[:3], audio[:30])
    assert (c.frames, c.frames_reference, c.frames_candidate, c.codes_equal, c.codes_total) == (3, 5, 3, 9, 9)
    assert c.max_audio_error == 0 and not c.identical_codes and not c.passes()
    assert "frames 3 (x86 5, arm 3)" in compare.format_line("tiny", "fp32", "max", c)


def test_the_root_runs_the_tests_that_need_no_exporter(tmp_path):
    files = {
        "test_a.py": "import numpy\nfrom voxtral_edge.runtime import Synthesizer\n",
        "test_b.py": "from voxtral_edge.export.reference import Reference\nimport ml_dtypes, hypothesis\n",
        "test_c.py": "def test():\n    import onnx\n",
        "test_d.py": "from voxtral_edge.export import bundle\n",
        "test_e.py": "from voxtral_edge.quant.rewrite import quantize_bundle\n",
        "test_f.py": "import torch\n",
        "helper.py": "import onnx\n",
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    assert [p.name for p in compare.runtime_test_files(tmp_path)] == ["test_a.py", "test_b.py"]
    real = {p.name for p in compare.runtime_test_files(Path(__file__).parent)}
    assert {"test_runtime.py", "test_text.py"} <= real
    assert not real & {"test_quant.py", "test_hardening.py", "test_torchfile.py", "test_cli.py"}


def test_kernels_are_read_from_an_onnxruntime_profile(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])
    w = helper.make_tensor("w", TensorProto.FLOAT, [3, 4], np.ones(12, np.float32))
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Relu", ["m"], ["y"])],
                              "g", [x], [y], [w])
    path = tmp_path / "g.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    options = ort.SessionOptions()
    options.enable_profiling = True
    options.profile_file_prefix = str(tmp_path / "profile")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    session.run(None, {"x": np.ones((2, 3), np.float32)})
    assert compare.kernels_run(Path(session.end_profiling())) == {"MatMul (CPUExecutionProvider)",
                                                                   "Relu (CPUExecutionProvider)"}


def test_teacher_forced_codes_count_each_difference_once():
    codes, audio = run(4)
    forced = codes.copy()
    forced[1, 2] += 1
    c = compare.compare_runs(codes, audio, codes, audio, codes, forced)
    assert (c.forced_equal, c.forced_total) == (11, 12)
    assert c.passes()  # the free-running codes agree; the teacher-forced count is reported beside them
    assert "teacher-forced 11/12" in compare.format_line("tiny", "int4", "max", c)
    assert compare.relative_error(np.array([2.0, -4.0]), np.array([2.0, -3.0])) == 0.25


def test_a_quantized_plan_is_close_within_the_probe_tolerance_and_forced_agreement():
    codes, audio = run(10)
    other = codes.copy()
    other[3:, 0] += 1  # free-running: apart from frame 3 on
    forced = codes.copy()
    forced[3, 0] += 1  # teacher-forced: one code of 30 differs (97 %)
    c = compare.compare_runs(codes, audio, other, audio, codes, forced)
    assert not c.passes()
    assert compare.close(c, {"latent": 0.02, "codec": 0.001})
    assert compare.format_line("tiny", "int4", "max", c, probe_errors={"latent": 0.02}).endswith("close")
    assert not compare.close(c, {"latent": 0.5})  # a graph off by more than the tolerance
    assert compare.format_line("tiny", "int4", "max", c, probe_errors={"latent": 0.5}).endswith("DIFFERS")
    forced[4:6, 0] += 1  # 3 of 30 differ: 90 % still holds, 4 do not
    assert compare.close(compare.compare_runs(codes, audio, other, audio, codes, forced), {})
    forced[6, 0] += 1
    assert not compare.close(compare.compare_runs(codes, audio, other, audio, codes, forced), {})
    assert compare.format_line("tiny", "fp32", "max", c).endswith("DIFFERS")  # no probes given: not close


def test_the_report_names_every_quantized_kernel_a_bundle_runs(tiny_bundle_dirs, tmp_path):
    """The report's compute ops include every quantized kernel family (the kernel self-test's, read from the
    graphs) that onnxruntime's profile shows run, for the int4 plan: MatMulNBits in the backbone, MatMulInteger
    in the batched flow head, DynamicQuantizeMatMul in the codec."""
    from voxtral_edge.kernelcheck import graph_families
    from voxtral_edge.quant.rewrite import quantize_bundle
    from voxtral_edge.runtime import Synthesizer

    bundle = quantize_bundle(tiny_bundle_dirs[0], tmp_path / "int4", "int4", progress=False)
    synth = Synthesizer.open(bundle, threads=1, profiling=str(tmp_path / "profile-"))
    synth.synthesize("Turn left.", next(iter(synth.voices)), seed=0, max_frames=3)
    families = set()
    for graph, session in synth.sessions.items():
        ran = compare.compute_ops(sorted(compare.kernels_run(Path(session.end_profiling()))))
        wanted = {f.op_type for f in graph_families(bundle / f"{graph}.onnx")}
        assert wanted <= set(ran), (graph, wanted, ran)
        families |= wanted
    assert families == {"MatMulNBits", "MatMulInteger", "DynamicQuantizeMatMul"}
