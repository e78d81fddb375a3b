"""Device profiles (every shipped one loads; every mistake is a ConfigError naming file and key) and the
roofline estimate's arithmetic on a hand-made manifest. No timing, no onnxruntime sessions."""

from __future__ import annotations

import dataclasses

import pytest

from voxtral_edge.errors import ConfigError
from voxtral_edge.estimate import bytes_per_weight, calibrate, calibration_error, estimate_frame
from voxtral_edge.manifest import PLAN_NAMES
from voxtral_edge.profiles import DeviceProfile, list_profiles, load_profile
from voxtral_edge.sessions import PROVIDERS

SHIPPED = {"x86-avx2", "x86-avx512", "raspberry-pi-5", "qualcomm-sa8155p", "qualcomm-sa8295p",
           "qualcomm-sa8255p", "renesas-rcar-h3", "nvidia-jetson-orin"}

GOOD = """\
name = "board"
description = "a test board"
[runtime]
threads = 4
plan = "int4"
steps = 7
cfg = 1.2
max_context = 2048
providers = ["cpu"]
chunk_frames = 4
[hardware]
cores = 4
memory_bandwidth_gbs = 10.0
fp32_gflops = 10.0
int8_gops = 40.0
"""


# -- profiles ----------------------------------------------------------------------------------------

def test_every_shipped_profile_loads():
    profiles = list_profiles()
    assert {p.name for p in profiles} == SHIPPED
    for p in profiles:
        assert p.source.endswith(f"{p.name}.toml") and p.description
        assert p.plan in PLAN_NAMES and p.threads <= p.cores
        assert set(p.providers) <= set(PROVIDERS) and p.providers[-1] == "cpu"
        assert load_profile(p.name) == p


def test_profile_from_a_path(tmp_path):
    path = tmp_path / "board.toml"
    path.write_text(GOOD)
    p = load_profile(path)
    assert (p.name, p.threads, p.cfg, p.providers, p.int8_gops) == ("board", 4, 1.2, ("cpu",), 40.0)
    assert p.source == str(path) and load_profile(str(path)) == p


def test_codec_thread_keys_are_optional(tmp_path):
    path = tmp_path / "board.toml"
    path.write_text(GOOD)
    assert (load_profile(path).codec_threads, load_profile(path).codec_pipeline) == (None, False)
    path.write_text(GOOD.replace("chunk_frames = 4\n", "chunk_frames = 4\ncodec_threads = 2\n"
                                                               "codec_pipeline = true\n"))
    assert (load_profile(path).codec_threads, load_profile(path).codec_pipeline) == (2, True)
    assert load_profile("qualcomm-sa8295p").codec_pipeline and not load_profile("x86-avx512").codec_pipeline
    for bad, key in (("codec_threads = 0\n", "runtime.codec_threads"), ('codec_pipeline = "yes"\n', "runtime.codec_pipeline"),
                     ("codec_pipeline = 1\n", "runtime.codec_pipeline")):
        path.write_text(GOOD.replace("chunk_frames = 4\n", "chunk_frames = 4\n" + bad))
        with pytest.raises(ConfigError, match=rf"{path}: '{key}'"):
            load_profile(path)


def test_unknown_profile_name_lists_the_shipped_ones():
    with pytest.raises(ConfigError) as e:
        load_profile("pentium-ii")
    assert "pentium-ii" in str(e.value) and all(name in str(e.value) for name in SHIPPED)
    with pytest.raises(ConfigError, match="missing.toml"):
        load_profile("missing.toml")


BAD = [  # (text replaced, replacement, what the message must name)
    ('description = "a test board"\n', 'description = "a test board"\ncolour = "red"\n', "colour"),
    ("steps = 7\n", "steps = 7\nturbo = true\n", "runtime.turbo"),
    ("threads = 4\n", "", "runtime.threads"),
    ("threads = 4\n", 'threads = "four"\n', "runtime.threads"),
    ("threads = 4\n", "threads = 0\n", "runtime.threads"),
    ("threads = 4\n", "threads = true\n", "runtime.threads"),
    ("steps = 7\n", "steps = 7.5\n", "runtime.steps"),
    ("cfg = 1.2\n", "cfg = -1.2\n", "runtime.cfg"),
    ('plan = "int4"\n', 'plan = "int3"\n', "runtime.plan"),
    ('providers = ["cpu"]\n', 'providers = ["tpu", "cpu"]\n', "runtime.providers"),
    ('providers = ["cpu"]\n', "providers = []\n", "runtime.providers"),
    ('providers = ["cpu"]\n', 'providers = "cpu"\n', "runtime.providers"),
    ('plan = "int4"\n', 'precision = "int4"\n', "runtime.precision"),
    ("memory_bandwidth_gbs = 10.0\n", "memory_bandwidth_gbs = -10.0\n", "hardware.memory_bandwidth_gbs"),
    ("fp32_gflops = 10.0\n", "fp32_gflops = nan\n", "hardware.fp32_gflops"),
    ("int8_gops = 40.0\n", "", "hardware.int8_gops"),
    ('name = "board"\n', 'name = "other-board"\n', "name"),
    ('name = "board"\n', "name = 3\n", "name"),
    ("[hardware]\n", "[hw]\n", "hw"),
    ("cfg = 1.2\n", "cfg = = 1.2\n", "TOML"),
]


@pytest.mark.parametrize("old, new, key", BAD, ids=[f"{i}-{b[2]}" for i, b in enumerate(BAD)])
def test_bad_profiles(tmp_path, old, new, key):
    assert old in GOOD
    path = tmp_path / "board.toml"
    path.write_text(GOOD.replace(old, new, 1))
    with pytest.raises(ConfigError) as e:
        load_profile(path)
    assert str(path) in str(e.value) and key in str(e.value)


def test_error_messages_say_what_is_accepted(tmp_path):
    path = tmp_path / "board.toml"
    path.write_text(GOOD.replace('plan = "int4"', 'plan = "int3"'))
    with pytest.raises(ConfigError, match="fp32, int8, int4, int4-all"):
        load_profile(path)
    path.write_text(GOOD.replace('["cpu"]', '["tpu"]'))
    with pytest.raises(ConfigError, match="a non-empty list of cpu"):
        load_profile(path)
    path.write_text(GOOD.replace("threads = 4", "threads = 0"))
    with pytest.raises(ConfigError, match="positive integer"):
        load_profile(path)


# -- the estimate ------------------------------------------------------------------------------------

def manifest(backbone=(1_000_000_000, "fp32"), flow=(400_000_000, "fp32"), codec=(200_000_000, "fp32")) -> dict:
    """A bundle manifest with round sizes: each graph's .onnx is empty, its .onnx.data holds the bytes."""
    files, graphs = {}, {}
    for name, (size, precision) in zip(("backbone_step", "flow_head", "codec_decoder"), (backbone, flow, codec)):
        files[f"{name}.onnx"] = {"size": 0, "sha256": ""}
        files[f"{name}.onnx.data"] = {"size": size, "sha256": ""}
        graphs[name] = {"file": f"{name}.onnx", "data": f"{name}.onnx.data", "precision": precision}
    return {"files": files, "graphs": graphs, "quantization": {"plan": "test", "graphs": {}},
            "model": {"backbone": {"n_layers": 2, "n_kv_heads": 1, "head_dim": 125}},
            "audio": {"frame_rate": 12.5}}


PROFILE = DeviceProfile(name="board", description="", threads=4, plan="int4", steps=2, cfg=1.2,
                        max_context=2048, providers=("cpu",), chunk_frames=4, cores=4,
                        memory_bandwidth_gbs=10.0, fp32_gflops=10.0, int8_gops=40.0, source="test")


def test_estimate_by_hand():
    e = estimate_frame(manifest(), PROFILE)
    # backbone: 1 GB at 10 GB/s = 100 ms; 2 x 0.25 G params x 1 row = 0.5 GFLOP at 10 GFLOP/s = 50 ms
    assert e["graphs"]["backbone_step"]["memory_ms"] == pytest.approx(100)
    assert e["graphs"]["backbone_step"]["compute_ms"] == pytest.approx(50)
    assert e["backbone_ms"] == pytest.approx(100) and e["bound"]["backbone_step"] == "memory"
    # flow head: 0.4 GB -> 40 ms; 2 x 0.1 G x 4.4 rows = 0.88 GFLOP -> 88 ms per step, 2 steps
    assert e["flow_step_ms"] == pytest.approx(88) and e["bound"]["flow_head"] == "compute"
    assert e["flow_ms"] == pytest.approx(176)
    # codec, 4 frames a call: 0.2 GB -> 20 ms; 2 x 0.05 G x 15/4 x 4 = 1.5 GFLOP -> 150 ms, 37.5 ms a frame
    assert e["codec_ms"] == pytest.approx(37.5) and e["bound"]["codec_decoder"] == "compute"
    assert e["frame_ms"] == pytest.approx(313.5)
    assert e["rtf"] == pytest.approx(313.5 / 80)
    # steps, chunk and KV reads: 2 x 2 layers x 1 x 125 x 4 bytes = 2 kB a position, 500 000 positions = 1 GB
    e = estimate_frame(manifest(), PROFILE, steps=1, chunk_frames=1, position=500_000)
    assert e["flow_ms"] == pytest.approx(88) and e["backbone_ms"] == pytest.approx(200)
    assert e["codec_ms"] == pytest.approx(37.5)  # 20 ms of weights vs 37.5 ms of compute: still compute-bound


def test_estimate_quantized_and_threads():
    m = manifest(backbone=(625_000_000, "int4"), flow=(112_500_000, "int8"))
    e = estimate_frame(m, PROFILE)
    # int4: 0.625 GB -> 62.5 ms; 1 G params x 2 flops x 1 row = 2 G int8 ops at 40 GOP/s = 50 ms
    assert e["backbone_ms"] == pytest.approx(62.5) and e["bound"]["backbone_step"] == "memory"
    # int8: 0.1125 GB -> 11.25 ms; 0.1 G params x 2 x 4.4 = 0.88 G ops -> 22 ms
    assert e["flow_step_ms"] == pytest.approx(22) and e["bound"]["flow_head"] == "compute"
    # 2 threads of 4 cores: half the compute, so the backbone turns compute-bound (100 ms)
    e = estimate_frame(m, dataclasses.replace(PROFILE, threads=2))
    assert e["backbone_ms"] == pytest.approx(100) and e["bound"]["backbone_step"] == "compute"
    # more threads than cores buy nothing
    assert estimate_frame(m, dataclasses.replace(PROFILE, threads=8))["frame_ms"] == pytest.approx(
        estimate_frame(m, PROFILE)["frame_ms"])


def test_estimate_with_the_codec_on_its_own_thread():
    # 100 ms backbone + 176 ms flow head; the codec (37.5 ms a frame) runs beside them: the frame is 276 ms
    piped = dataclasses.replace(PROFILE, codec_pipeline=True)
    e = estimate_frame(manifest(), piped)
    assert e["codec_ms"] == pytest.approx(37.5) and e["frame_ms"] == pytest.approx(276)
    # on 1 thread of 4 cores the codec takes 150 ms a frame, longer than the rest: it sets the pace
    e = estimate_frame(manifest(), dataclasses.replace(piped, codec_threads=1), steps=0)
    assert e["codec_ms"] == pytest.approx(150) and e["frame_ms"] == pytest.approx(150)


def test_bytes_per_weight_follows_the_quantization_entry():
    m = manifest(backbone=(1, "int4"), flow=(1, "int8"), codec=(1, "int8"))
    assert [bytes_per_weight(m, g) for g in m["graphs"]] == [0.625, 1.125, 1.125]
    m["quantization"]["graphs"] = {
        "backbone_step": {"method": "nbits", "bits": 4, "block_size": 32, "symmetric": False},
        "flow_head": {"method": "nbits", "bits": 8, "block_size": 128, "symmetric": True},
        "codec_decoder": {"method": "dynamic-int8", "bits": 8}}
    assert bytes_per_weight(m, "backbone_step") == 0.5 + 4 / 32 + 0.5 / 32
    assert bytes_per_weight(m, "flow_head") == 1 + 4 / 128
    assert bytes_per_weight(m, "codec_decoder") == 1.0


def test_calibration_reproduces_the_measurements():
    measured = {"backbone_step": 50.0, "flow_head": 60.0, "codec_decoder": 10.0}
    factors = calibrate(manifest(), PROFILE, measured)
    assert factors == pytest.approx({"backbone_step": 2.0, "flow_head": 88 / 60, "codec_decoder": 3.75})
    e = estimate_frame(manifest(), PROFILE, calibration=factors)
    assert (e["backbone_ms"], e["flow_step_ms"], e["codec_ms"]) == pytest.approx((50, 60, 10))
    assert e["frame_ms"] == pytest.approx(50 + 2 * 60 + 10)
    with pytest.raises(ValueError, match="flow_head"):
        calibrate(manifest(), PROFILE, {"flow_head": 0})


def test_calibration_error():
    measured = {"backbone_step": 50.0, "flow_head": 60.0, "codec_decoder": 10.0}
    slower = {g: 2 * ms for g, ms in measured.items()}
    runs = {"a": (manifest(), measured), "b": (manifest(), slower)}
    errors = calibration_error(runs, PROFILE, fit_on="a")
    assert errors["a"] == pytest.approx({"backbone_step": 0, "flow_head": 0, "codec_decoder": 0, "frame": 0})
    assert errors["b"] == pytest.approx({"backbone_step": -0.5, "flow_head": -0.5, "codec_decoder": -0.5,
                                         "frame": -0.5})
    # a bundle half the size, measured at half the time, is predicted exactly by factors from the first
    half = manifest(backbone=(500_000_000, "fp32"), flow=(200_000_000, "fp32"), codec=(100_000_000, "fp32"))
    runs["c"] = (half, {g: ms / 2 for g, ms in measured.items()})
    assert calibration_error(runs, PROFILE, fit_on="a")["c"] == pytest.approx(
        {"backbone_step": 0, "flow_head": 0, "codec_decoder": 0, "frame": 0})
